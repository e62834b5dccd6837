#!/usr/bin/env python
"""Multi30k De→En: dense teacher → Distilled Embedding students and baselines → sacreBLEU table.

Every stage runs stock fairseq commands (fairseq-preprocess, fairseq-train, fairseq-generate) and writes
its output under ``--results``; a stage whose output exists is skipped, so an interrupted run continues
where it stopped. Profiles: ``ci`` (a few hundred sentences, a few updates: the test of this script),
``demo`` (``make demo``: a short run, ≤ 20 minutes on 2 CPU cores), ``cpu`` (every row with the
benchmark's teacher, budgets sized for ≤ 3 hours on 2 CPU cores) and ``full`` (``make benchmark``:
the teacher trained to early stopping, 2,000 updates per row; use a GPU).

    python examples/multi30k/run.py --profile demo --results results/multi30k-demo
"""

import argparse
import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fairseq_distilled_emb import evaluation, factorization  # noqa: E402
from benchmarks import report  # noqa: E402

logger = logging.getLogger("multi30k")
PLUGIN = REPO / "fairseq_distilled_emb"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
DOWNLOAD = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}.{lang}.gz"


# ------------------------------------------------------------------------------------ profiles


@dataclass
class Profile:
    """Everything a profile changes: data size, model size, update budgets and which rows run."""

    max_sentences: Optional[int]  # lines of each split used (None = all)
    vocab_size: int
    teacher_arch: List[str]
    teacher_train: List[str]
    student_train: List[str]
    rows: List[str]
    eval_batch_size: int = 128
    max_tokens: int = 4096
    notes: str = ""
    #: a teacher trained by this recipe and shipped with it (fp16 export, its sentencepiece model
    #: and dictionary): the profile then spends its minutes on the students (--train-teacher:
    #: train it from scratch instead)
    shipped_teacher: Optional[Path] = None


COMMON_TRAIN = [
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
    "--lr-scheduler", "inverse_sqrt", "--weight-decay", "0.0001",
    "--label-smoothing", "0.1", "--no-epoch-checkpoints", "--log-format", "simple",
    "--log-interval", "50", "--seed", "1",
    # fairseq's default (-1) breaks the concatenation of train + train1 (gold + teacher output)
    "--upsample-primary", "1",
]
MODEL_256 = [
    "--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "256",
    "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024", "--decoder-ffn-embed-dim",
    "1024", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.3",
]
MODEL_128 = [
    "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128",
    "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim",
    "512", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.1",
]
# The dense family: for each compression, a stock transformer whose width gives the compressed
# row's total parameter count, trained from scratch with the teacher's recipe.
DENSE_ROWS = {"dense_4x": 4, "dense_8x": 8, "dense_16x": 16, "dense_32x": 32}
ALL_ROWS = [
    "teacher_continued", "svd_linear_8x", "random_init_8x", "distilled_no_kd_8x", "distilled_linear_8x",
    "distilled_4x", "distilled_8x", "distilled_16x", "distilled_32x", "distilled_output_kd_8x",
    "tensor_train_8x", "svd_linear_16x", "tensor_train_16x", *DENSE_ROWS,
]
# What a row trains on: the gold targets, the teacher's beam output (sequence-level KD [C]) or both.
TRAINING_DATA = ("gold", "teacher", "both")
def cosine_fine_tuning(peak_lr: float, updates: int) -> List[str]:
    """The students' schedule chosen on valid (benchmarks/schedule_sweep.py, demo shape): 50
    warm-up updates to a peak of 1.5x the teacher's own peak, then one cosine half-period down to
    1 % of it over the whole budget (beat inverse-sqrt and fixed at every peak tried)."""
    return ["--lr", f"{peak_lr:g}", "--lr-scheduler", "cosine", "--warmup-updates", "50",
            "--min-lr", f"{peak_lr / 100:g}", "--max-update", str(updates)]


PROFILES = {
    "ci": Profile(
        max_sentences=300, vocab_size=500, teacher_arch=MODEL_128,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "10", "--max-update", "12"],
        student_train=["--lr", "5e-4", "--warmup-updates", "5", "--max-update", "6"],
        rows=["svd_linear_8x", "distilled_4x", "distilled_8x", "distilled_16x", "tensor_train_8x"],
        eval_batch_size=64, max_tokens=2000,
        notes="CI profile: a few hundred sentences and a few updates; BLEU is meaningless here.",
    ),
    "demo": Profile(
        max_sentences=None, vocab_size=8000, teacher_arch=MODEL_128,
        teacher_train=["--lr", "2e-3", "--warmup-updates", "200", "--max-update", "600"],
        student_train=cosine_fine_tuning(3e-3, 400),
        rows=["distilled_8x", "svd_linear_8x", "dense_8x", "teacher_continued"],
        shipped_teacher=REPO / "examples" / "multi30k" / "demo_teacher",
        notes="Demo profile: the shipped teacher (d=128, 2+2 layers, 600 updates; "
        "examples/multi30k/demo_teacher/, --train-teacher retrains it), students fine-tuned with "
        "the schedule chosen on valid (benchmarks/results/schedule-sweep-demo/). The teacher is "
        "far from converged, so a student's extra updates also train it further: "
        "teacher_continued (the teacher given the students' schedule and budget) is the "
        "reference for what compression costs.",
    ),
    "cpu": Profile(
        max_sentences=None, vocab_size=8000, teacher_arch=MODEL_256,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "1000", "--max-epoch", "12"],
        student_train=cosine_fine_tuning(1.5e-3, 250),
        rows=["distilled_8x", "teacher_continued", "svd_linear_8x", "dense_8x", "distilled_16x",
              "distilled_4x",
              "distilled_no_kd_8x", "distilled_linear_8x", "random_init_8x",
              "distilled_output_kd_8x", "tensor_train_8x"],
        notes="CPU profile: the full profile's teacher (3+3 layers, d=256, ffn 1024) stopped after "
        "12 epochs (1,620 updates); dense_8x trains from scratch with the same 12 epochs; sized "
        "for ≤ 3 hours on 2 CPU cores.",
    ),
    "full": Profile(
        max_sentences=None, vocab_size=8000, teacher_arch=MODEL_256,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "1000", "--max-epoch", "60",
                       "--patience", "5"],
        student_train=cosine_fine_tuning(1.5e-3, 2000),
        rows=ALL_ROWS,
        notes="Full profile: teacher 3+3 layers d=256 ffn 1024 (early stopping on valid loss, "
        "patience 5, ≤60 epochs); the dense family uses the teacher's recipe from scratch.",
    ),
}

# Each row: the student's flags on top of the profile's; "task" selects how it starts.
ROW_FLAGS: Dict[str, Dict] = {
    "svd_linear_8x": dict(compression=8, flags=["--embedding-init", "svd",
                                                "--embedding-activation", "linear",
                                                "--embedding-distill-weight", "0"]),
    "random_init_8x": dict(compression=8, flags=["--embedding-init", "random"]),
    "distilled_no_kd_8x": dict(compression=8, flags=["--embedding-distill-weight", "0"]),
    "distilled_linear_8x": dict(compression=8, flags=["--embedding-activation", "linear"]),
    "distilled_4x": dict(compression=4, flags=[]),
    "distilled_8x": dict(compression=8, flags=[]),
    "distilled_16x": dict(compression=16, flags=[]),
    "distilled_32x": dict(compression=32, flags=[]),
    "svd_linear_16x": dict(compression=16, flags=["--embedding-init", "svd",
                                                  "--embedding-activation", "linear",
                                                  "--embedding-distill-weight", "0"]),
    "tensor_train_16x": dict(compression=16, flags=["--embedding-factorization", "tensor-train"]),
    "distilled_output_kd_8x": dict(compression=8, flags=["--kd-alpha", "0.5",
                                                         "--kd-temperature", "2"]),
    "tensor_train_8x": dict(compression=8, flags=["--embedding-factorization", "tensor-train"]),
}
ROW_DESCRIPTIONS = {
    "teacher": "dense teacher (stock transformer)",
    "teacher_continued": "the dense teacher trained on with the students' schedule and budget "
                         "(the reference for what compression costs)",
    **{name: f"dense transformer, same total params as the {ratio}x student (narrower d), from "
             "scratch with the teacher's recipe" for name, ratio in DENSE_ROWS.items()},
    "svd_linear_8x": "truncated-SVD linear factorization 8x, fine-tuned without KD",
    "random_init_8x": "ReLU factorization 8x from random init (+ embedding KD)",
    "distilled_no_kd_8x": "Distilled Embedding 8x without KD (β=0)",
    "distilled_linear_8x": "Distilled Embedding 8x with linear f",
    "distilled_4x": "Distilled Embedding 4x (full method)",
    "distilled_8x": "Distilled Embedding 8x (full method)",
    "distilled_16x": "Distilled Embedding 16x (full method)",
    "distilled_32x": "Distilled Embedding 32x (full method)",
    "svd_linear_16x": "truncated-SVD linear factorization 16x, fine-tuned without KD",
    "tensor_train_16x": "tensor-train embedding 16x, from the teacher's TT-SVD (+ embedding KD)",
    "distilled_output_kd_8x": "Distilled Embedding 8x + output KD (α=0.5, T=2; beyond the paper)",
    "tensor_train_8x": "tensor-train embedding (tensorly-torch), same budget, from the teacher's "
                       "TT-SVD (+ embedding KD)",
}


# ------------------------------------------------------------------------------------ plumbing


def fairseq_tool(name):
    """The console script next to this Python (the venv's), falling back to PATH."""
    candidate = Path(sys.executable).parent / f"fairseq-{name}"
    return str(candidate) if candidate.exists() else f"fairseq-{name}"


def run(command, log_path: Path, stdin: Optional[str] = None) -> str:
    """Run a command, save its output to ``log_path``, return it; fail with the output's tail.

    stdout and stderr are read separately and joined (not interleaved): fairseq's progress bar
    writes carriage returns to stderr which would otherwise glue onto the start of stdout lines
    (``S-5``/``D-5``), making whole sentences look dropped from fairseq-generate's output.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("$ " + " ".join(command))
    started = time.perf_counter()
    completed = subprocess.run(command, input=stdin, capture_output=True, text=True)
    output = completed.stdout + "\n" + completed.stderr
    log_path.write_text(output)
    if completed.returncode != 0:
        raise SystemExit(
            f"command failed ({completed.returncode}): {' '.join(command)}\n"
            f"--- last lines of {log_path} ---\n{output[-3000:]}"
        )
    logger.info(f"  done in {time.perf_counter() - started:.0f}s (log: {log_path})")
    return output


def write_json(path: Path, payload):
    """Write atomically: a killed run never leaves a half-written stage marker."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    temporary.replace(path)


def device_flags(use_gpu: bool, fp16: bool):
    """--cpu, or --fp16 on GPU with a short loss-scale window: the ReLU students overflow at the
    start (seen on an H100: the scale fell 128 -> 1 and stayed there for 1,000 updates with
    fairseq's default window of 16,384 updates)."""
    if not use_gpu:
        return ["--cpu"]
    return ["--fp16", "--fp16-scale-window", "128"] if fp16 else []


# ------------------------------------------------------------------------------------ stages


def read_split(data_dir: Optional[Path], split: str, lang: str, limit: Optional[int]) -> List[str]:
    """Lines of one raw split: ../shared when present, else the public Multi30k files."""
    name = f"{SPLITS[split]}.{lang}.gz"
    if data_dir is not None and (data_dir / name).exists():
        with gzip.open(data_dir / name, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    else:
        url = DOWNLOAD.format(name=SPLITS[split], lang=lang)
        logger.info(f"{data_dir}/{name} not found: downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                lines = gzip.decompress(response.read()).decode("utf-8").splitlines()
        except OSError as error:
            raise SystemExit(
                f"cannot read Multi30k: {data_dir}/{name} is missing and {url} is unreachable "
                f"({error}). Pass --data-dir with the raw task-1 files (*.de.gz, *.en.gz)."
            )
    return lines[:limit] if limit else lines


def prepare(args, profile: Profile, results: Path) -> Path:
    """Raw text → joint sentencepiece (train side only) → fairseq-preprocess --joined-dictionary;
    with a shipped teacher, its sentencepiece model and dictionary instead of new ones."""
    shipped = None if args.train_teacher else profile.shipped_teacher
    data_bin = results / "data-bin"
    if (data_bin / "preprocess.done").exists():
        return data_bin
    work = results / "data"
    work.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for lang in ("de", "en"):
            lines = read_split(args.data_dir, split, lang, profile.max_sentences)
            (work / f"{split}.raw.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sentencepiece_encode(work, ["de", "en"], args.vocab_size or profile.vocab_size,
                         model=shipped / "spm.model" if shipped else None)
    binarize(results, data_bin, [
        "--source-lang", "de", "--target-lang", "en", "--trainpref", f"{work}/train.spm",
        "--validpref", f"{work}/valid.spm", "--testpref", f"{work}/test.spm",
        "--joined-dictionary",
    ] + (["--srcdict", str(shipped / "dict.txt")] if shipped else []))
    return data_bin


def verify_shipped_teacher(shipped: Path) -> None:
    """Check every shipped file's SHA-256 against the one recorded when it was made: a corrupted
    or swapped teacher, sentencepiece model or dictionary is refused before anything uses it."""
    import hashlib

    for line in (shipped / "SHA256SUMS").read_text().splitlines():
        expected, name = line.split()
        found = hashlib.sha256((shipped / name).read_bytes()).hexdigest()
        if found != expected:
            raise SystemExit(f"{shipped / name}: SHA-256 {found} differs from the recorded "
                             f"{expected}; restore the file (git checkout) or pass --train-teacher")


def install_shipped_teacher(shipped: Path, teacher_dir: Path) -> Dict:
    """Copy the (verified) shipped teacher into the results; return the summary of the training
    run that made it."""
    checkpoint = teacher_dir / "checkpoint_best.pt"
    if not checkpoint.exists():
        teacher_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped / "teacher_fp16.pt", checkpoint)
    return json.loads((shipped / "train.json").read_text())


def sentencepiece_encode(work: Path, langs: List[str], vocab_size: int,
                         model: Optional[Path] = None) -> None:
    """One sentencepiece model on the train side of ``langs`` (joint when several; ``model``: use
    that one instead), then each split's ``<split>.raw.<lang>`` under ``work`` encoded into
    ``<split>.spm.<lang>``."""
    import sentencepiece as spm

    if model is not None:
        shutil.copyfile(model, work / "spm.model")
    else:
        spm.SentencePieceTrainer.train(
            input=",".join(f"{work}/train.raw.{lang}" for lang in langs),
            model_prefix=str(work / "spm"), vocab_size=vocab_size, character_coverage=1.0,
            model_type="unigram", bos_id=-1, eos_id=-1, minloglevel=2,
            hard_vocab_limit=False,  # a small corpus may not have vocab_size pieces: take them all
        )
    processor = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    for split in SPLITS:
        for lang in langs:
            raw = (work / f"{split}.raw.{lang}").read_text(encoding="utf-8").splitlines()
            pieces = [" ".join(processor.encode(line, out_type=str)) for line in raw]
            (work / f"{split}.spm.{lang}").write_text("\n".join(pieces) + "\n", encoding="utf-8")


def binarize(results: Path, data_bin: Path, flags: List[str], log_name: str = "preprocess") -> None:
    """fairseq-preprocess into a fresh ``data_bin``, marked done only once it has completed."""
    if data_bin.exists():
        shutil.rmtree(data_bin)
    run([fairseq_tool("preprocess"), *flags, "--destdir", str(data_bin), "--workers", "2"],
        results / "logs" / f"{log_name}.log")
    (data_bin / "preprocess.done").write_text("ok\n")


def distill_training_data(args, profile: Profile, results: Path, data_bin: Path,
                          teacher: Path) -> Path:
    """Sequence-level KD [C] (Kim & Rush 2016): the teacher's beam-5 translation of every training
    source sentence, aligned by id (the count is checked), binarized with the teacher's dictionary.
    Returns the data-bin whose ``train`` split is the teacher's output (valid/test stay gold)."""
    kd_bin = results / "data-bin-kd"
    if (kd_bin / "preprocess.done").exists():
        return kd_bin
    work = results / "data"
    sources = (work / "train.spm.de").read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    output = run([fairseq_tool("generate"), str(data_bin), "--user-dir", str(PLUGIN),
                  "--path", str(teacher), "--gen-subset", "train", "--beam", "5",
                  "--batch-size", str(profile.eval_batch_size), "--required-batch-size-multiple", "1",
                  "--max-len-a", "1.2", "--max-len-b", "10"] + device_flags(args.use_gpu, False),
                 results / "logs" / "teacher.train.generate.log")
    translations = evaluation.hypotheses_by_id(output, len(sources), prefix="H-")
    (work / "train.kd.de").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (work / "train.kd.en").write_text("\n".join(translations) + "\n", encoding="utf-8")
    binarize(results, kd_bin, [
        "--source-lang", "de", "--target-lang", "en", "--trainpref", f"{work}/train.kd",
        "--validpref", f"{work}/valid.spm", "--testpref", f"{work}/test.spm",
        "--srcdict", str(data_bin / "dict.de.txt"), "--joined-dictionary",
    ], log_name="preprocess.kd")
    write_json(kd_bin / "distill.json", {"sentences": len(translations),
                                         "seconds": round(time.perf_counter() - started, 1)})
    return kd_bin


def gold_and_distilled(results: Path, data_bin: Path, kd_bin: Path) -> Path:
    """A data-bin whose training set is gold + teacher output: fairseq's translation task
    concatenates ``train``, ``train1``, … of one directory, so the teacher's split is linked in as
    ``train1`` beside the gold one (nothing is copied)."""
    both = results / "data-bin-both"
    if (both / "preprocess.done").exists():
        return both
    if both.exists():
        shutil.rmtree(both)
    both.mkdir()
    for source in data_bin.iterdir():
        if source.name != "preprocess.done":
            (both / source.name).symlink_to(source.resolve())
    for source in kd_bin.glob("train.*"):
        (both / source.name.replace("train.", "train1.", 1)).symlink_to(source.resolve())
    (both / "preprocess.done").write_text("ok\n")
    return both


def training_data(args, profile: Profile, results: Path, data_bin: Path, teacher: Path,
                  kind: str) -> Path:
    """The data-bin a row trains on: ``gold``, ``teacher`` (its beam output) or ``both``."""
    if kind == "gold":
        return data_bin
    kd_bin = distill_training_data(args, profile, results, data_bin, teacher)
    return kd_bin if kind == "teacher" else gold_and_distilled(results, data_bin, kd_bin)


def train(data_bin: Path, save_dir: Path, flags: List[str], log_name: str, results: Path) -> Dict:
    """fairseq-train into ``save_dir`` unless its training finished before; returns its timing."""
    done = save_dir / "train.json"
    if done.exists():
        return json.loads(done.read_text())
    started = time.perf_counter()
    output = run([fairseq_tool("train"), str(data_bin), "--save-dir", str(save_dir)] + flags,
                 results / "logs" / f"{log_name}.train.log")
    summary = parse_train_log(output)
    summary["train_seconds"] = round(time.perf_counter() - started, 1)
    write_json(done, summary)
    return summary


def parse_train_log(output: str) -> Dict:
    """Parameter counts, reconstruction time/error, final train wps from a fairseq-train log."""
    summary = {}
    dense = re.search(r"num\. shared model params: ([\d,]+)", output)
    if dense:
        summary["total_params"] = int(dense.group(1).replace(",", ""))
    factorized = re.search(r"factorized params ([\d,]+) .*?total model params ([\d,]+)", output)
    if factorized:
        summary["embedding_params"] = int(factorized.group(1).replace(",", ""))
        summary["total_params"] = int(factorized.group(2).replace(",", ""))
    recon = re.search(r"reconstruction done in (\d+) steps, ([\d.]+)s", output)
    if recon:
        summary["reconstruction_seconds"] = float(recon.group(2))
    errors = re.search(r"relative Frobenius error ([\d.]+) \| rank-\d+ SVD ([\d.]+) \| "
                       r"rank-\d+ SVD ([\d.]+)", output)
    tensor_train = re.search(r"tensor-train rank \d+ .*relative Frobenius error ([\d.]+)", output)
    if tensor_train:
        summary["reconstruction_error"] = float(tensor_train.group(1))
    if errors:
        summary["reconstruction_error"] = float(errors.group(1))
        summary["svd_error_rank_r"] = float(errors.group(2))
        summary["svd_error_rank_r_minus_1"] = float(errors.group(3))
    valid_losses = re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", output)
    if valid_losses:
        summary["best_valid_loss"] = min(float(loss) for loss in valid_losses)
    wps = re.findall(r"\| train \| epoch .*?\| wps ([\d.]+)", output)
    if wps:
        summary["train_wps"] = float(wps[-1])
    updates = re.findall(r"num_updates[ =](\d+)", output)
    if updates:
        summary["updates"] = int(updates[-1])
    return summary


def evaluate(data_bin: Path, checkpoint: Path, out_dir: Path, results: Path, args,
             profile: Profile, name: str, subset: str = "test") -> Dict:
    """fairseq-generate --beam 5 on ``subset``, sentencepiece-decoded, sacreBLEU vs raw references."""
    done = out_dir / ("eval.json" if subset == "test" else f"eval.{subset}.json")
    if done.exists():
        return json.loads(done.read_text())
    references = (results / "data" / f"{subset}.raw.en").read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    output = run([fairseq_tool("generate"), str(data_bin), "--user-dir", str(PLUGIN),
                  "--path", str(checkpoint), "--gen-subset", subset, "--beam", "5",
                  "--batch-size", str(profile.eval_batch_size), "--required-batch-size-multiple", "1",
                  "--remove-bpe", "sentencepiece",
                  "--max-len-a", "1.2", "--max-len-b", "10"]
                 + device_flags(args.use_gpu, False),
                 results / "logs" / f"{name}.{subset}.generate.log")
    score = evaluation.score_generation(output, references)
    (out_dir / f"{subset}.hyp.en").write_text("\n".join(score.hypotheses) + "\n", encoding="utf-8")
    payload = {"bleu": round(score.bleu, 2), "signature": score.signature,
               "sentences": score.sentences, "sentences_per_second": score.sentences_per_second,
               "checkpoint_bytes": checkpoint.stat().st_size,
               "eval_seconds": round(time.perf_counter() - started, 1)}
    write_json(done, payload)
    logger.info(f"{name}: BLEU {score.bleu:.2f} ({score.signature})")
    return payload


def export_size(checkpoint: Path, out_dir: Path, results: Path, name: str) -> int:
    """Bytes of the fp16 inference export (``fairseq-distilled-emb export --fp16``): what ships.
    A stage like the others: skipped when its output exists."""
    exported = out_dir / "exported_fp16.pt"
    if not exported.exists():
        run([sys.executable, "-m", "fairseq_distilled_emb", "export", str(checkpoint),
             str(exported), "--fp16"], results / "logs" / f"{name}.export.log")
    return exported.stat().st_size


def teacher_flags(profile: Profile, args) -> List[str]:
    # --user-dir only for its torch.load allow-list: an interrupted stock run resumes from
    # checkpoint_last.pt, which torch >= 2.6 refuses to unpickle without it
    return (["--user-dir", str(PLUGIN), "--arch", "transformer", "--share-all-embeddings",
             "--task", "translation",
             "--criterion", "label_smoothed_cross_entropy", "--max-tokens",
             str(profile.max_tokens)] + profile.teacher_arch + COMMON_TRAIN
            + profile.teacher_train + device_flags(args.use_gpu, args.fp16))


def student_flags(row: str, profile: Profile, args, teacher: Path) -> List[str]:
    spec = ROW_FLAGS[row]
    return (["--user-dir", str(PLUGIN), "--arch", "distilled_transformer", "--share-all-embeddings",
             "--task", "translation_reconstruction_init", "--teacher-path", str(teacher),
             "--embedding-compression", str(spec["compression"]),
             "--criterion", "label_smoothed_cross_entropy_with_distillation",
             "--max-tokens", str(profile.max_tokens)]
            + profile.teacher_arch + COMMON_TRAIN + profile.student_train + spec["flags"]
            + device_flags(args.use_gpu, args.fp16))


def dense_flags(profile: Profile, args, vocab: int, target_params: int) -> List[str]:
    """A stock dense model with ``target_params`` parameters (narrower d and FFN, same depth and
    heads), trained from scratch with the teacher's recipe."""
    arch = dict(zip(profile.teacher_arch[::2], profile.teacher_arch[1::2]))
    layers = int(arch["--encoder-layers"]), int(arch["--decoder-layers"])
    heads = int(arch["--encoder-attention-heads"])
    dim, ffn = factorization.matching_dense_shape(vocab, layers, heads, target_params)
    arch.update({"--encoder-embed-dim": dim, "--decoder-embed-dim": dim,
                 "--encoder-ffn-embed-dim": ffn, "--decoder-ffn-embed-dim": ffn})
    arch_flags = [str(item) for pair in arch.items() for item in pair]
    return (["--user-dir", str(PLUGIN), "--arch", "transformer", "--share-all-embeddings",
             "--task", "translation", "--criterion", "label_smoothed_cross_entropy", "--max-tokens",
             str(profile.max_tokens)] + arch_flags + COMMON_TRAIN + profile.teacher_train
            + device_flags(args.use_gpu, args.fp16))


def dense_target_params(teacher_total: int, vocab: int, dim: int, compression: float) -> int:
    """Total parameters of the ``compression``x low-rank student of a teacher (its body + r·(V+d))."""
    rank = factorization.rank_for_compression(vocab, dim, compression)
    return teacher_total - vocab * dim + factorization.factorized_embedding_params(vocab, dim, rank)


def with_overrides(profile: Profile, args) -> Profile:
    """The profile with the command line's batch size / student budget overrides applied."""
    student_train = list(profile.student_train)
    if args.student_updates:
        student_train[student_train.index("--max-update") + 1] = str(args.student_updates)
    return replace(profile, max_tokens=args.max_tokens or profile.max_tokens,
                   student_train=student_train)


def dictionary_size(data_bin: Path) -> int:
    """Symbols in fairseq's joined dictionary: 4 specials + one per line of dict.de.txt."""
    return 4 + sum(1 for _ in open(data_bin / "dict.de.txt", encoding="utf-8"))


def run_rows(args, profile: Profile, results: Path, data_bin: Path, teacher_ckpt: Path,
             teacher_summary: Dict) -> Dict[str, Dict]:
    """Train, score, export each row; a row trained on teacher output is named ``<row>+<data>``."""
    rows = {}
    vocab = dictionary_size(data_bin)
    dim = int(dict(zip(profile.teacher_arch[::2], profile.teacher_arch[1::2]))["--encoder-embed-dim"])
    row_data = training_data(args, profile, results, data_bin, teacher_ckpt, args.train_data)
    for row in profile.rows if args.rows is None else args.rows:
        name = row if args.train_data == "gold" else f"{row}+{args.train_data}"
        save_dir = results / "rows" / name
        if row in DENSE_ROWS:
            target = dense_target_params(teacher_summary["total_params"], vocab, dim,
                                         DENSE_ROWS[row])
            flags = dense_flags(profile, args, vocab, target)
        elif row == "teacher_continued":
            flags = (teacher_flags(profile, args) + profile.student_train
                     + ["--finetune-from-model", str(teacher_ckpt)])
        else:
            flags = student_flags(row, profile, args, teacher_ckpt)
        summary = train(row_data, save_dir, flags, name, results)
        if row in DENSE_ROWS:
            summary["embedding_params"] = vocab * int(flags[flags.index("--encoder-embed-dim") + 1])
        checkpoint = save_dir / "checkpoint_best.pt"
        scores = evaluate(data_bin, checkpoint, save_dir, results, args, profile, name)
        description = ROW_DESCRIPTIONS[row] + ("" if args.train_data == "gold" else
                                              f"; trained on {args.train_data} data (seq-KD)")
        rows[name] = {**summary, **scores, "description": description,
                      "from_teacher": row not in DENSE_ROWS,
                      "exported_bytes": export_size(checkpoint, save_dir, results, name)}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--results", type=Path, help="results directory (default results/multi30k-<profile>)")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "multi30k",
                        help="raw Multi30k task-1 files (*.de.gz, *.en.gz)")
    parser.add_argument("--vocab-size", type=int, help="sentencepiece vocabulary (default: the profile's; 8000)")
    parser.add_argument("--rows", nargs="*", choices=ALL_ROWS,
                        help="student/baseline rows to run (default: the profile's; none: the "
                        "teacher only)")
    parser.add_argument("--train-data", choices=TRAINING_DATA, default="gold",
                        help="what the rows train on: the gold targets, the teacher's beam-5 "
                        "translations of the training source (sequence-level KD), or both")
    parser.add_argument("--train-teacher", action="store_true",
                        help="train the teacher from scratch even where the profile ships one")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="train in fp32 on GPU")
    parser.add_argument("--max-tokens", type=int, help="override the profile's --max-tokens")
    parser.add_argument("--student-updates", type=int,
                        help="override the profile's fine-tuning updates per student row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s", stream=sys.stdout)
    import torch

    args.use_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    profile = with_overrides(PROFILES[args.profile], args)
    results = args.results or REPO / "results" / f"multi30k-{args.profile}"
    results.mkdir(parents=True, exist_ok=True)
    if profile.shipped_teacher and not args.train_teacher:
        verify_shipped_teacher(profile.shipped_teacher)
    data_bin = prepare(args, profile, results)
    teacher_dir = results / "teacher"
    if profile.shipped_teacher and not args.train_teacher:
        teacher_summary = install_shipped_teacher(profile.shipped_teacher, teacher_dir)
    else:
        teacher_summary = train(data_bin, teacher_dir, teacher_flags(profile, args), "teacher",
                                results)
    teacher_ckpt = teacher_dir / "checkpoint_best.pt"
    teacher_scores = evaluate(data_bin, teacher_ckpt, teacher_dir, results, args, profile, "teacher")
    vocab = dictionary_size(data_bin)
    dim = int(dict(zip(profile.teacher_arch[::2], profile.teacher_arch[1::2]))["--encoder-embed-dim"])
    rows = {"teacher": {**teacher_summary, **teacher_scores, "embedding_params": vocab * dim,
                        "description": ROW_DESCRIPTIONS["teacher"],
                        "exported_bytes": export_size(teacher_ckpt, teacher_dir, results,
                                                      "teacher")}}
    rows.update(run_rows(args, profile, results, data_bin, teacher_ckpt, teacher_summary))
    budget = profile.student_train[profile.student_train.index("--max-update") + 1]
    notes = f"{profile.notes} Every student row: {budget} fine-tuning updates."
    meta = {"profile": args.profile, "notes": notes, "vocab": vocab, "dim": dim,
            "device": torch.cuda.get_device_name(0) if args.use_gpu else "cpu",
            "command": " ".join([Path(sys.executable).name] + sys.argv)}
    table = report.write_report(results, rows, meta)
    print(table)


if __name__ == "__main__":
    main()
