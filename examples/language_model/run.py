#!/usr/bin/env python
"""Language modeling on the English side of Multi30k: dense teacher → Distilled Embedding students
and baselines → test perplexity table.

Every stage runs stock fairseq commands (``fairseq-preprocess --only-source``, ``fairseq-train``,
``fairseq-eval-lm``) and writes under ``--results``; a stage whose output exists is skipped, so an
interrupted run continues where it stopped. Profiles: ``ci`` (a few hundred sentences, a few
updates: checks the plumbing, numbers are meaningless), ``demo`` (the whole English side, a small
model, a few minutes on 2 idle CPU cores) and ``full`` (a larger model and budget; use a GPU).

    python -m examples.language_model.run --profile demo --results results/lm-demo

Nothing is downloaded: the raw text is read from ``--data-dir`` (default
``../shared/data/multi30k``).
For WikiText-103 see README.md next to this file.
"""

import argparse
import gzip
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from examples import dense_size
from examples.language_model.perplexity_table import write_report
from examples.language_model.profiles import (  # noqa: F401  (also read as recipe.X elsewhere)
    ALL_ROWS,
    COMMON_TRAIN,
    MAIN_ROWS,
    PROFILES,
    ROWS,
    STUDENT_BETA,
    TEACHER_DESCRIPTION,
    Profile,
)
from examples.multi30k import run as recipe  # the translation recipe's stages, imported
from examples.multi30k.commands import merge_flags

REPO = recipe.REPO
run, train, write_json = recipe.run, recipe.train, recipe.write_json
with_overrides = recipe.with_overrides  # any profile dataclass with student_train/max_tokens
fairseq_tool, device_flags = recipe.fairseq_tool, recipe.device_flags

logger = logging.getLogger("language_model")
PLUGIN = REPO / "fairseq_distilled_emb"
SPLITS = recipe.SPLITS
# Multi30k captions are independent sentences: one sentence per sample, for training and evaluation.
SENTENCES = ["--sample-break-mode", "eos", "--tokens-per-sample", "128"]


def read_split(data_dir: Path, split: str, limit: Optional[int]) -> List[str]:
    path = data_dir / f"{SPLITS[split]}.en.gz"
    if not path.exists():
        raise SystemExit(
            f"error: {path} not found: pass --data-dir with the raw Multi30k task-1 files "
            "(train.en.gz, val.en.gz, test_2016_flickr.en.gz); this script downloads nothing"
        )
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return lines[:limit] if limit else lines


def prepare(args, profile: Profile, results: Path) -> Path:
    """Raw English → sentencepiece (train side only) → fairseq-preprocess --only-source."""
    data_bin = results / "data-bin"
    if (data_bin / "preprocess.done").exists():
        return data_bin
    work = results / "data"
    work.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = read_split(args.data_dir, split, profile.max_sentences)
        (work / f"{split}.raw.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe.sentencepiece_encode(work, ["en"], args.vocab_size or profile.vocab_size)
    recipe.binarize(results, data_bin, [
        "--only-source", "--trainpref", f"{work}/train.spm.en",
        "--validpref", f"{work}/valid.spm.en", "--testpref", f"{work}/test.spm.en",
    ])
    return data_bin


def arch_flags(dim: int, layers: int, heads: int) -> List[str]:
    """fairseq's transformer_lm_gpt family (pre-norm, gelu, tied) at the given size."""
    return ["--decoder-embed-dim", str(dim), "--decoder-ffn-embed-dim", str(4 * dim),
            "--decoder-layers", str(layers), "--decoder-attention-heads", str(heads),
            "--share-decoder-input-output-embed", "--dropout", "0.1", "--attention-dropout", "0.1"]


def teacher_flags(profile: Profile, args, dim: Optional[int] = None) -> List[str]:
    """A stock dense transformer_lm_gpt (``dim``: another width) with the teacher's recipe;
    --user-dir only for its torch.load allow-list (resuming, --finetune-from-model)."""
    return merge_flags(
        ["--user-dir", str(PLUGIN), "--task", "language_modeling", "--arch", "transformer_lm_gpt",
         "--criterion", "cross_entropy", "--max-tokens", str(profile.max_tokens)],
        SENTENCES, arch_flags(dim or profile.dim, profile.layers, profile.heads),
        COMMON_TRAIN, profile.teacher_train, device_flags(args.use_gpu, args.fp16))


def student_flags(row: str, profile: Profile, args, teacher: Path) -> List[str]:
    """A compressed student of ``teacher``: the teacher's shape, the common training flags with
    the profile's fine-tuning schedule, the LM students' β, then the row's own flags (a row's
    ``--embedding-distill-weight`` replaces that β)."""
    spec = ROWS[row]
    return merge_flags(
        ["--user-dir", str(PLUGIN), "--task", "language_modeling_reconstruction_init",
         "--teacher-path", str(teacher), "--arch", "distilled_transformer_lm_gpt",
         "--embedding-compression", str(spec.compression),
         "--criterion", "label_smoothed_cross_entropy_with_distillation",
         "--label-smoothing", "0.0", "--max-tokens", str(profile.max_tokens)],
        SENTENCES, arch_flags(profile.dim, profile.layers, profile.heads), COMMON_TRAIN,
        profile.student_train, STUDENT_BETA, spec.flags, device_flags(args.use_gpu, args.fp16))


_EVAL_LM = re.compile(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)")
_EVAL_SPEED = re.compile(r"Evaluated ([\d,]+) tokens in ([\d.]+)s \(([\d.]+) tokens/s\)")


def evaluate(data_bin: Path, checkpoint: Path, out_dir: Path, results: Path, args,
             profile: Profile, name: str, subset: str = "test") -> Dict:
    """Stock fairseq-eval-lm on ``subset``, one caption per sample (as in training)."""
    done = out_dir / ("eval.json" if subset == "test" else f"eval.{subset}.json")
    if done.exists():
        return json.loads(done.read_text())
    log = results / "logs" / (f"{name}.eval-lm.log" if subset == "test"
                              else f"{name}.{subset}.eval-lm.log")
    output = run([fairseq_tool("eval-lm"), str(data_bin), "--user-dir", str(PLUGIN),
                  "--path", str(checkpoint), "--gen-subset", subset,
                  "--max-tokens", str(profile.max_tokens)] + SENTENCES
                 + device_flags(args.use_gpu, False), log)
    match = _EVAL_LM.search(output)
    if match is None:
        raise SystemExit(f"no perplexity in {log}")
    speed = _EVAL_SPEED.search(output)
    payload = {"loss_base2": float(match.group(1)), "perplexity": float(match.group(2)),
               "eval_tokens": int(speed.group(1).replace(",", "")) if speed else None,
               "eval_tokens_per_second": float(speed.group(3)) if speed else None,
               "checkpoint_bytes": checkpoint.stat().st_size}
    write_json(done, payload)
    logger.info(f"{name}: {subset} perplexity {payload['perplexity']:.2f}")
    return payload


#: what benchmarks/schedule_sweep.py ranks points by: (score key, its label, higher is better)
SCORE = ("perplexity", "valid ppl", False)


def training_data(args, profile: Profile, results: Path, data_bin: Path, teacher: Path,
                  kind: str) -> Path:
    """The data-bin a row trains on: only ``gold`` text for a language model."""
    if kind != "gold":
        raise SystemExit(f"--train-data {kind}: the language model recipe trains on gold text only")
    return data_bin


def dictionary_size(data_bin: Path) -> int:
    """Symbols of fairseq's dictionary: 4 specials + one per line of dict.txt."""
    return 4 + sum(1 for _ in open(data_bin / "dict.txt", encoding="utf-8"))


def row_flags(row: str, profile: Profile, args, vocab: int, teacher: Path,
              teacher_total: Optional[int]) -> List[str]:
    """The fairseq-train flags of one row: a student of ``teacher``, a narrower dense LM with the
    ``compression``x student's total parameters (``teacher_total``: the teacher's parameter
    count as its training logged it; only the dense rows read it), or the teacher trained on
    with the students' schedule."""
    spec = ROWS[row]
    if spec.kind == "dense":
        target = recipe.dense_target_params(teacher_total, vocab, profile.dim, spec.compression)
        width = dense_size.matching_lm_width(vocab, profile.layers, profile.heads, target)
        return teacher_flags(profile, args, dim=width)
    if spec.kind == "continued":
        return merge_flags(teacher_flags(profile, args), profile.student_train,
                           ["--finetune-from-model", str(teacher)])
    return student_flags(row, profile, args, teacher)


def run_rows(args, profile: Profile, results: Path, data_bin: Path, teacher_ckpt: Path,
             teacher_summary: Dict) -> Dict[str, Dict]:
    rows = {}
    vocab = dictionary_size(data_bin)
    for row in args.rows or profile.rows:
        save_dir = results / "rows" / row
        spec = ROWS[row]
        flags = row_flags(row, profile, args, vocab, teacher_ckpt,
                          teacher_summary.get("total_params"))
        summary = train(data_bin, save_dir, flags, row, results)
        if spec.kind != "student":  # a dense model's embedding: V × its own width
            summary["embedding_params"] = vocab * int(flags[flags.index("--decoder-embed-dim") + 1])
        scores = evaluate(data_bin, save_dir / "checkpoint_best.pt", save_dir, results, args,
                          profile, row)
        rows[row] = {**summary, **scores, "description": ROWS[row].description}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--results", type=Path,
                        help="results directory (default results/lm-multi30k-<profile>)")
    parser.add_argument("--data-dir", type=Path,
                        default=REPO.parent / "shared" / "data" / "multi30k",
                        help="raw Multi30k task-1 files (train.en.gz, val.en.gz, "
                        "test_2016_flickr.en.gz)")
    parser.add_argument("--vocab-size", type=int,
                        help="sentencepiece vocabulary (default: the profile's)")
    parser.add_argument("--rows", nargs="*", choices=ALL_ROWS, help="student/baseline rows to run")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="train in fp32 on GPU")
    parser.add_argument("--max-tokens", type=int, help="override the profile's --max-tokens")
    parser.add_argument("--student-updates", type=int,
                        help="override the profile's fine-tuning updates per student row")
    args = parser.parse_args(argv)
    # fairseq_cli's format, on stdout; force: importing fairseq has configured the root logger
    # already (its default format, on stderr)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    import torch

    args.use_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    profile = with_overrides(PROFILES[args.profile], args)
    results = args.results or REPO / "results" / f"lm-multi30k-{args.profile}"
    results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_bin = prepare(args, profile, results)
    teacher_dir = results / "teacher"
    teacher_summary = train(data_bin, teacher_dir, teacher_flags(profile, args), "teacher", results)
    teacher_ckpt = teacher_dir / "checkpoint_best.pt"
    teacher_scores = evaluate(data_bin, teacher_ckpt, teacher_dir, results, args, profile,
                              "teacher")
    vocab = dictionary_size(data_bin)
    rows = {"teacher": {**teacher_summary, **teacher_scores,
                        "embedding_params": vocab * profile.dim,
                        "description": TEACHER_DESCRIPTION}}
    rows.update(run_rows(args, profile, results, data_bin, teacher_ckpt, teacher_summary))
    test_sentences = sum(1 for _ in open(results / "data" / "test.raw.en", encoding="utf-8"))
    meta = {"profile": args.profile, "notes": profile.notes, "vocab": vocab, "dim": profile.dim,
            "test_sentences": test_sentences,
            "device": (torch.cuda.get_device_name(0) if args.use_gpu
                       else f"cpu ({os.cpu_count()} cores)"),
            "wall_seconds": time.perf_counter() - started,
            "command": " ".join(["python", "-m", "examples.language_model.run"] + sys.argv[1:])}
    print(write_report(results, rows, meta))
    logger.info(f"finished in {meta['wall_seconds']:.0f}s (stages found done were skipped)")


if __name__ == "__main__":
    main()
