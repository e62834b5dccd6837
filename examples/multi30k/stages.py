"""The Multi30k recipe's stages: each runs stock fairseq commands (or sentencepiece), writes its
output under the results directory and is skipped when that output exists, so an interrupted run
continues where it stopped. ``profiles.py`` declares the profiles and rows; ``run.py`` calls these
in order; the sequence-level KD data stage is ``sequence_kd.py``.
"""

import gzip
import json
import logging
import os
import re
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from examples.multi30k.commands import (
    device_flags,
    fairseq_tool,
    file_sha256,
    refuse_other_settings,
    run,
    starting_checkpoint,
    training_settings,
    write_json,
)
from examples.multi30k.train_log import parse_train_log, training_wall_seconds
from fairseq_distilled_emb import evaluation

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "fairseq_distilled_emb"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
DOWNLOAD = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}.{lang}.gz"


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
    #: fairseq-generate's --beam for the test/valid BLEU and sequence-level KD
    beam: int = 5
    max_tokens: int = 4096
    notes: str = ""
    #: a teacher trained by this recipe and shipped with it (fp16 export, its sentencepiece model
    #: and dictionary): the profile then spends its minutes on the students (--train-teacher:
    #: train it from scratch instead)
    shipped_teacher: Optional[Path] = None
    #: budgets valid chose apart from ``student_train``'s --max-update, by compression: a row
    #: compressing the embedding at least ``c``x fine-tunes for ``updates[c]`` updates (the
    #: largest such ``c``), whatever its method, so rows at one compression stay comparable
    updates_from_compression: Dict[float, int] = field(default_factory=dict)

    def fine_tuning(self, compression: float) -> List[str]:
        """The fine-tuning flags of a row at ``compression`` (0: not compressed):
        ``student_train`` with that compression's budget; the cosine schedule spans it."""
        flags = list(self.student_train)
        budgets = self.updates_from_compression
        reached = [c for c in budgets if compression >= c]
        if reached:
            flags[flags.index("--max-update") + 1] = str(budgets[max(reached)])
        return flags

    def budget_note(self) -> str:
        """The fine-tuning budgets in words, for the table's notes."""
        default = self.student_train[self.student_train.index("--max-update") + 1]
        own = "".join(f"; rows at {c:g}x or more: {updates:,}"
                      for c, updates in sorted(self.updates_from_compression.items()))
        return f"Student rows: {int(default):,} fine-tuning updates{own}."


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
                f"error: cannot read Multi30k: {data_dir}/{name} is missing and {url} is unreachable "
                f"({error}). Pass --data-dir with the raw task-1 files (*.de.gz, *.en.gz)."
            )
    return lines[:limit] if limit else lines


def language_pair(results: Path, source: Optional[str] = None,
                  target: Optional[str] = None) -> Tuple[str, str]:
    """The translation direction of a results directory: its binarized data's file names
    (``train.<src>-<tgt>.<lang>.bin``) once prepared, else the one asked for. Every stage reads and
    writes one direction's files, so asking a prepared directory for another one is refused
    rather than mixed in."""
    prepared = sorted((results / "data-bin").glob("train.*-*.*.bin"))
    recorded = tuple(prepared[0].name.split(".")[1].split("-")) if prepared else None
    asked = (source, target) if source and target else None
    if recorded and asked and recorded != asked:
        raise SystemExit(f"error: {results} was prepared for {recorded[0]}→{recorded[1]}; pass "
                         f"another --results for {asked[0]}→{asked[1]}")
    if not recorded and not asked:
        raise SystemExit(f"error: {results} has no binarized data: run python -m examples.multi30k.run "
                         "with this --results first")
    return recorded or asked


def prepare(args, profile: Profile, results: Path, shipped: Optional[Path] = None) -> Path:
    """Raw text → joint sentencepiece (train side only) → fairseq-preprocess --joined-dictionary;
    with a ``shipped`` teacher, its sentencepiece model and dictionary instead of new ones."""
    data_bin = results / "data-bin"
    if (data_bin / "preprocess.done").exists():
        return data_bin
    work = results / "data"
    work.mkdir(parents=True, exist_ok=True)
    pair = [args.source_lang, args.target_lang]
    for split in SPLITS:
        for lang in pair:
            lines = read_split(args.data_dir, split, lang, profile.max_sentences)
            (work / f"{split}.raw.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sentencepiece_encode(work, pair, args.vocab_size or profile.vocab_size,
                         model=shipped / "spm.model" if shipped else None)
    binarize(results, data_bin, [
        "--source-lang", pair[0], "--target-lang", pair[1], "--trainpref", f"{work}/train.spm",
        "--validpref", f"{work}/valid.spm", "--testpref", f"{work}/test.spm",
        "--joined-dictionary",
    ] + (["--srcdict", str(shipped / "dict.txt")] if shipped else []))
    return data_bin


def recorded_sha256(shipped: Path) -> Dict[str, str]:
    """The SHA-256 of each shipped file, as recorded in SHA256SUMS when it was packed."""
    return {name: expected for expected, name in
            (line.split() for line in (shipped / "SHA256SUMS").read_text().splitlines())}


def verify_shipped_teacher(shipped: Path) -> None:
    """Check every shipped file's SHA-256 against the one recorded when it was made: a corrupted
    or swapped teacher, sentencepiece model or dictionary is refused before anything uses it."""
    for name, expected in recorded_sha256(shipped).items():
        found = file_sha256(shipped / name)
        if found != expected:
            raise SystemExit(f"error: {shipped / name}: SHA-256 {found} differs from the recorded "
                             f"{expected}; restore the file (git checkout) or pass --train-teacher")


def install_shipped_teacher(shipped: Path, teacher_dir: Path) -> Dict:
    """Copy the (verified) shipped teacher into the results; return the summary of the training
    run that made it. A different teacher already there (trained with --train-teacher in these
    results) is refused, not kept under the shipped one's summary nor replaced."""
    checkpoint, file = teacher_dir / "checkpoint_best.pt", shipped / "teacher_fp16.pt"
    if checkpoint.exists() and file_sha256(checkpoint) != recorded_sha256(shipped)[file.name]:
        raise SystemExit(f"error: {checkpoint} is another teacher than the shipped {file}: pass "
                         "another --results, or move that checkpoint away to install the shipped "
                         "one here")
    if not checkpoint.exists():  # copied whole or not at all: a stopped copy is not a teacher
        teacher_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, checkpoint.with_suffix(".partial"))
        os.replace(checkpoint.with_suffix(".partial"), checkpoint)
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


def train(data_bin: Path, save_dir: Path, flags: List[str], log_name: str, results: Path) -> Dict:
    """fairseq-train into ``save_dir`` unless its training finished before with the same
    settings; returns its timing."""
    done = save_dir / "train.json"
    settings = {**training_settings(flags), **starting_checkpoint(flags)}
    if done.exists():
        return refuse_other_settings(done, settings)
    log = results / "logs" / f"{log_name}.train.log"
    output = run(train_command(data_bin, save_dir, flags), log)
    summary = parse_train_log(output)
    if (save_dir / "reconstruction.json").exists():  # a student: what the task wrote at its start
        summary.update(start_figures(json.loads((save_dir / "reconstruction.json").read_text())))
    # the log holds every run of this training (a resumed one appends): their wall time, summed
    summary["train_seconds"] = training_wall_seconds(log.read_text(encoding="utf-8"))
    summary["settings"] = settings
    write_json(done, summary)
    return summary


def train_command(data_bin: Path, save_dir: Path, flags: List[str]) -> List[str]:
    """The fairseq-train command line of a stage, exactly as it is run and printed."""
    return [fairseq_tool("train"), str(data_bin), "--save-dir", str(save_dir)] + flags


def start_figures(figures: Dict) -> Dict:
    """The table's columns from a student's ``reconstruction.json`` (its first embedding: the
    shared one)."""
    start = next(iter(figures["embeddings"].values()))
    summary = {"total_params": figures["total_params"], "embedding_params": start["params"],
               "reconstruction_error": round(start["relative_error"], 4)}
    for key in ("svd_error_rank_r", "svd_error_rank_r_minus_1"):
        if key in start:
            summary[key] = round(start[key], 4)
    if "seconds" in start:
        summary["reconstruction_seconds"] = start["seconds"]
    return summary


def evaluate(data_bin: Path, checkpoint: Path, out_dir: Path, results: Path, args,
             profile: Profile, name: str, subset: str = "test") -> Dict:
    """fairseq-generate (the profile's beam) on ``subset``, sentencepiece-decoded, sacreBLEU against
    the raw references."""
    done = out_dir / ("eval.json" if subset == "test" else f"eval.{subset}.json")
    if done.exists():
        return json.loads(done.read_text())
    target = args.target_lang
    references = (results / "data" / f"{subset}.raw.{target}").read_text(
        encoding="utf-8").splitlines()
    started = time.perf_counter()
    output = run([fairseq_tool("generate"), str(data_bin), "--user-dir", str(PLUGIN),
                  "--path", str(checkpoint), "--gen-subset", subset, "--beam", str(profile.beam),
                  "--batch-size", str(profile.eval_batch_size), "--required-batch-size-multiple", "1",
                  "--remove-bpe", "sentencepiece",
                  "--max-len-a", "1.2", "--max-len-b", "10"]
                 + device_flags(args.use_gpu, False),
                 results / "logs" / f"{name}.{subset}.generate.log")
    score = evaluation.score_generation(output, references)
    (out_dir / f"{subset}.hyp.{target}").write_text("\n".join(score.hypotheses) + "\n",
                                                    encoding="utf-8")
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
