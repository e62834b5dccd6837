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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks import report
from examples import dense_size
from examples.multi30k import run as recipe  # the translation recipe's stages, imported

REPO = recipe.REPO
run, train, write_json = recipe.run, recipe.train, recipe.write_json
with_overrides = recipe.with_overrides  # any profile dataclass with student_train/max_tokens
fairseq_tool, device_flags = recipe.fairseq_tool, recipe.device_flags

logger = logging.getLogger("language_model")
PLUGIN = REPO / "fairseq_distilled_emb"
SPLITS = recipe.SPLITS
# Multi30k captions are independent sentences: one sentence per sample, for training and evaluation.
SENTENCES = ["--sample-break-mode", "eos", "--tokens-per-sample", "128"]


# ------------------------------------------------------------------------------------ profiles


@dataclass
class Profile:
    """Everything a profile changes: data size, model size, update budgets and which rows run."""

    max_sentences: Optional[int]  # lines of each split used (None = all)
    vocab_size: int
    dim: int
    layers: int
    heads: int
    teacher_train: List[str]
    student_train: List[str]
    rows: List[str]
    max_tokens: int = 4096
    notes: str = ""


ALL_ROWS = ["smaller_dim", "svd_linear_8x", "distilled_no_kd_8x", "distilled_4x", "distilled_8x",
            "distilled_16x", "distilled_output_kd_8x", "teacher_continued"]
MAIN_ROWS = ["svd_linear_8x", "smaller_dim", "distilled_4x", "distilled_8x", "distilled_16x",
             "teacher_continued"]
PROFILES = {
    "ci": Profile(
        max_sentences=400, vocab_size=500, dim=64, layers=2, heads=2,
        teacher_train=["--lr", "2e-3", "--warmup-updates", "5", "--max-update", "12"],
        student_train=["--lr", "5e-4", "--warmup-updates", "2", "--max-update", "4"],
        rows=MAIN_ROWS, max_tokens=2000,
        notes="CI profile: a few hundred sentences and a few updates; perplexities are "
        "meaningless here.",
    ),
    "demo": Profile(
        max_sentences=None, vocab_size=4000, dim=128, layers=2, heads=4,
        teacher_train=["--lr", "3e-3", "--warmup-updates", "100", "--max-update", "300"],
        # chosen on valid perplexity (benchmarks/results/schedule-sweep-lm-demo/)
        student_train=recipe.cosine_fine_tuning(3e-3, 300),
        rows=MAIN_ROWS,
        notes="Demo profile: teacher d=128, 2 layers, FFN 512, 300 updates of ≤4,096 tokens "
        "(about 3 epochs of the 29k English training captions, sentencepiece 4k); 300 "
        "fine-tuning updates per student (cosine from 3e-3, β=0: chosen on valid); the smaller-dim "
        "dense model gets the teacher's 300 updates from scratch, the continued teacher the "
        "students' 300. Sized for a few minutes of 2 idle CPU cores: the teacher is far from "
        "converged.",
    ),
    "full": Profile(
        max_sentences=None, vocab_size=8000, dim=256, layers=4, heads=4,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "1000", "--max-epoch", "50",
                       "--patience", "5"],
        # the demo's choice (cosine from the teacher's peak) carried over, not checked on valid
        student_train=recipe.cosine_fine_tuning(1e-3, 2000),
        rows=ALL_ROWS,
        notes="Full profile: teacher d=256, 4 layers, FFN 1024 (early stopping on valid loss, "
        "patience 5, ≤50 epochs); every student row gets the same 2,000 fine-tuning updates.",
    ),
}

# The translation recipe's row declarations, plus the dense LM of the 8x student's total size.
ROWS = {**{name: recipe.ROWS[name] for name in ALL_ROWS if name in recipe.ROWS},
        "smaller_dim": recipe.Row("smaller_dim", "smaller-dim dense, same total params as the 8x "
                                  "student, from scratch", kind="dense", compression=8)}
TEACHER_DESCRIPTION = "dense teacher (stock transformer_lm_gpt shape, tied embedding)"
# β of the embedding-distillation term, chosen on valid perplexity for the LM students
# (benchmarks/results/schedule-sweep-lm-demo/: β 0 / 0.1 / 1 -> 34.94 / 35.07 / 36.29 at 300
# updates); a row's own flags still override it
STUDENT_BETA = ["--embedding-distill-weight", "0"]
COLUMNS = (
    ("row", "row"),
    ("description", "what"),
    ("embedding_params", "emb. params"),
    ("total_params", "total params"),
    ("perplexity", "test ppl"),
    ("reconstruction_error", "recon. rel. err"),
    ("train_seconds", "train s"),
    ("eval_tokens_per_second", "eval tok/s"),
    ("checkpoint_bytes", "ckpt MB"),
)
COMMON_TRAIN = [
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
    "--lr-scheduler", "inverse_sqrt", "--weight-decay", "0.01", "--no-epoch-checkpoints",
    "--log-format", "simple", "--log-interval", "50", "--seed", "1",
]


# ------------------------------------------------------------------------------------ stages


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
    return (["--user-dir", str(PLUGIN), "--task", "language_modeling", "--arch", "transformer_lm_gpt",
             "--criterion", "cross_entropy", "--max-tokens", str(profile.max_tokens)]
            + SENTENCES + arch_flags(dim or profile.dim, profile.layers, profile.heads)
            + COMMON_TRAIN + profile.teacher_train + device_flags(args.use_gpu, args.fp16))


def student_flags(row: str, profile: Profile, args, teacher: Path) -> List[str]:
    spec = ROWS[row]
    return (["--user-dir", str(PLUGIN), "--task", "language_modeling_reconstruction_init",
             "--teacher-path", str(teacher), "--arch", "distilled_transformer_lm_gpt",
             "--embedding-compression", str(spec.compression),
             "--criterion", "label_smoothed_cross_entropy_with_distillation",
             "--label-smoothing", "0.0", "--max-tokens", str(profile.max_tokens)]
            + SENTENCES + arch_flags(profile.dim, profile.layers, profile.heads) + COMMON_TRAIN
            + profile.student_train + STUDENT_BETA + list(spec.flags)
            + device_flags(args.use_gpu, args.fp16))


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


def run_rows(args, profile: Profile, results: Path, data_bin: Path, teacher_ckpt: Path,
             teacher_summary: Dict) -> Dict[str, Dict]:
    rows = {}
    vocab, dim = dictionary_size(data_bin), profile.dim
    for row in args.rows or profile.rows:
        save_dir = results / "rows" / row
        spec = ROWS[row]
        if spec.kind == "dense":
            target = recipe.dense_target_params(teacher_summary["total_params"], vocab, dim,
                                                spec.compression)
            width = dense_size.matching_lm_width(vocab, profile.layers, profile.heads, target)
            flags = teacher_flags(profile, args, dim=width)
        elif spec.kind == "continued":
            flags = (teacher_flags(profile, args) + profile.student_train
                     + ["--finetune-from-model", str(teacher_ckpt)])
        else:
            flags = student_flags(row, profile, args, teacher_ckpt)
        summary = train(data_bin, save_dir, flags, row, results)
        if spec.kind == "dense":
            summary["embedding_params"] = vocab * width
        if spec.kind == "continued":
            summary["embedding_params"] = vocab * dim
        scores = evaluate(data_bin, save_dir / "checkpoint_best.pt", save_dir, results, args,
                          profile, row)
        rows[row] = {**summary, **scores, "description": ROWS[row].description}
    return rows


# ------------------------------------------------------------------------------------ report


def markdown_table(rows: Dict[str, Dict]) -> str:
    """The perplexity table (cells formatted as benchmarks/report.py formats the BLEU table)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for name, row in rows.items():
        values = {**row, "row": name}
        lines.append("| " + " | ".join(report.cell(key, values.get(key)) for key, _ in COLUMNS)
                     + " |")
    return "\n".join(lines)


def write_report(results: Path, rows: Dict[str, Dict], meta: Dict) -> str:
    """results.json and results.md (the perplexity table) under ``results``; returns the text."""
    (results / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = "\n\n".join(filter(None, [
        f"# Multi30k English language modeling ({meta['profile']} profile, {meta['device']})",
        meta.get("notes", ""),
        markdown_table(rows),
        f"Perplexity: `fairseq-eval-lm` on test_2016_flickr ({meta['test_sentences']:,} "
        "captions), per sentencepiece token including end-of-sentence, one caption per sample; "
        f"vocabulary {meta['vocab']:,} symbols, d={meta['dim']}. Wall time of the run that wrote "
        f"this: {meta['wall_seconds']:.0f}s on {meta['device']} (stages found done are not "
        "re-run).",
        f"Command: `{meta.get('command', '')}`",
    ]))
    (results / "results.md").write_text(text + "\n", encoding="utf-8")
    return text


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
