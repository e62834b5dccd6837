#!/usr/bin/env python
"""Language-model scoring speed, side by side in one run: ``fairseq-eval-lm --cpu`` tokens/s of
each checkpoint, and optionally of CTranslate2 conversions of them, on the same test split, the
same blocks and context window, the same cores.

Models are timed in turns (``--repeats`` rounds, best tokens/s kept), so a noisy neighbour slows
every model alike; the ratio is against the first checkpoint (the teacher). In a language model
the tied softmax is most of the work: V·d multiply-adds a token for the teacher, r·(V+d) for a
rank-r student.

    python -m benchmarks.eval_lm_speed results/lm-wikitext2-cpu/data-bin \\
        results/lm-wikitext2-cpu/teacher/checkpoint_best.pt \\
        results/lm-wikitext2-cpu/rows/distilled_8x/checkpoint_best.pt \\
        --sample-flags "--sample-break-mode none --tokens-per-sample 256 --context-window 128 \\
                        --softmax-batch 64" \\
        --ctranslate2 teacher=results/lm-wikitext2-cpu/teacher/checkpoint_best.pt \\
                      distilled_8x=results/lm-wikitext2-cpu/rows/distilled_8x/checkpoint_best.pt

``--ctranslate2 NAME=CHECKPOINT`` converts the checkpoint with CTranslate2's fairseq converter
(a student through ``export --project-in-out`` first: a stock transformer_lm with
``--decoder-input-dim r``, which the converter accepts), int8, into ``--work``, and scores the same
token stream with ``Generator.score_batch`` in blocks of the same new-token count and context.
``pip install ctranslate2`` first: a benchmark extra, never a plugin requirement.
"""

import argparse
import json
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from benchmarks.common import PLUGIN, run_cli
from benchmarks.ctranslate2_anchor import convert, converter_input

_EVAL = re.compile(r"Evaluated ([\d,]+) tokens in ([\d.]+)s \(([\d.]+) tokens/s\)")
_PPL = re.compile(r"Perplexity: ([\d.]+)")


def eval_lm(data_bin: Path, checkpoint: Path, subset: str, flags: List[str],
            max_tokens: int) -> Dict:
    output = run_cli("eval_lm", [data_bin, "--user-dir", PLUGIN, "--path", checkpoint,
                                 "--gen-subset", subset, "--max-tokens", max_tokens, "--cpu",
                                 *flags])["output"]
    speed, perplexity = _EVAL.search(output), _PPL.search(output)
    return {"tokens_per_second": float(speed.group(3)), "perplexity": float(perplexity.group(1)),
            "tokens": int(speed.group(1).replace(",", ""))}


def ctranslate2_model(name: str, checkpoint: Path, data_bin: Path, work: Path) -> Path:
    """CTranslate2 int8 of ``checkpoint`` (a compressed student via its stock project-in-out
    export); returns the model directory."""
    work.mkdir(parents=True, exist_ok=True)
    source = checkpoint
    if name != "teacher":
        source = work / f"{name}_project_in_out.pt"
        if not source.exists():
            subprocess.run([sys.executable, "-m", "fairseq_distilled_emb", "export",
                            str(checkpoint), str(source), "--project-in-out"], check=True,
                           capture_output=True)
    return convert(converter_input(source, work), data_bin, work / f"{name}_int8", "int8").parent


def token_stream(data_bin: Path, subset: str) -> List[str]:
    """The subset's symbols as fairseq-eval-lm scores them: each line's tokens and ``</s>``."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(data_bin / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(data_bin / subset), dictionary)
    return [dictionary[index] for item in dataset for index in item.tolist()]


def ctranslate2_score(model_dir: Path, stream: List[str], new: int, context: int,
                      threads: int = 2, batch: int = 32) -> Dict:
    """Perplexity and tokens/s of ``stream`` scored in blocks of ``new`` tokens, each after up to
    ``context`` earlier ones (behind ``</s>``, fairseq's start symbol)."""
    import ctranslate2

    generator = ctranslate2.Generator(str(model_dir), device="cpu", intra_threads=threads)
    blocks = [(["</s>"] + stream[max(0, start - context):start + new], min(start, context))
              for start in range(0, len(stream), new)]
    started = time.perf_counter()
    results = generator.score_batch([tokens for tokens, _ in blocks], max_batch_size=batch)
    seconds = time.perf_counter() - started
    log_prob = sum(sum(result.log_probs[skip:]) for result, (_, skip) in zip(results, blocks))
    return {"tokens_per_second": len(stream) / seconds,
            "perplexity": math.exp(-log_prob / len(stream)), "tokens": len(stream),
            "file_bytes": (model_dir / "model.bin").stat().st_size}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_bin", type=Path,
                        help="the fairseq-preprocess directory the checkpoints use")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="teacher first, then students")
    parser.add_argument("--sample-flags", default="--sample-break-mode none "
                        "--tokens-per-sample 256 --context-window 128 --softmax-batch 64",
                        help="fairseq-eval-lm's blocks (the recipe's corpora.eval_flags)")
    parser.add_argument("--subset", default="test", help="the split scored")
    parser.add_argument("--max-tokens", type=int, default=8192, help="fairseq-eval-lm --max-tokens")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of every model in turn; the best tokens/s is kept")
    parser.add_argument("--ctranslate2", nargs="*", default=[], metavar="NAME=CHECKPOINT",
                        help="also time this checkpoint converted to CTranslate2 int8")
    parser.add_argument("--work", type=Path, default=Path("results/eval-lm-speed"),
                        help="where the CTranslate2 conversions are written")
    parser.add_argument("--output", type=Path, help="write the speeds as JSON here")
    args = parser.parse_args(argv)
    flags = shlex.split(args.sample_flags)
    window = int(flags[flags.index("--context-window") + 1]) if "--context-window" in flags else 0
    tokens_per_sample = int(flags[flags.index("--tokens-per-sample") + 1])
    ct2 = {name: ctranslate2_model(name, Path(path), args.data_bin, args.work)
           for name, path in (item.split("=", 1) for item in args.ctranslate2)}
    stream = token_stream(args.data_bin, args.subset) if ct2 else []
    rows: Dict[str, Dict] = {}
    for _ in range(args.repeats):
        for path in args.checkpoints:
            row = eval_lm(args.data_bin, path, args.subset, flags, args.max_tokens)
            best = rows.setdefault(str(path), row)
            best["tokens_per_second"] = max(best["tokens_per_second"], row["tokens_per_second"])
        for name, model_dir in ct2.items():
            row = ctranslate2_score(model_dir, stream, tokens_per_sample - window, window)
            best = rows.setdefault(f"ctranslate2 int8 {name}", row)
            best["tokens_per_second"] = max(best["tokens_per_second"], row["tokens_per_second"])
    reference = rows[str(args.checkpoints[0])]["tokens_per_second"]
    print("| model | perplexity | tokens/s (CPU) | × first | CT2 file MB |\n|---|---|---|---|---|")
    for name, row in rows.items():
        size = f"{row['file_bytes'] / 1e6:.2f}" if "file_bytes" in row else "–"
        print(f"| {name} | {row['perplexity']:.2f} | {row['tokens_per_second']:.0f} | "
              f"{row['tokens_per_second'] / reference:.2f} | {size} |")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
