#!/usr/bin/env python
"""Language modeling on WikiText-2 (word level) or the English side of Multi30k: dense teacher →
Distilled Embedding students and baselines (adaptive input, a narrower dense model, post-training
int8/int4 codes of the embedding) → test perplexity table.

Every stage runs stock fairseq commands (``fairseq-preprocess --only-source``, ``fairseq-train``,
``fairseq-eval-lm``) and writes under ``--results``; a stage whose output exists is skipped, so an
interrupted run continues where it stopped (a training stage from its checkpoint_last.pt).
Profiles: ``ci``/``wikitext2-ci`` (plumbing: numbers are meaningless), ``demo`` (Multi30k's
English side, minutes on 2 CPU cores), ``wikitext2-cpu`` (hours on 2 cores), ``full``/
``wikitext2-full`` (a GPU); wikitext2-cpu/full score every row on valid too (choices are made there).

    python -m examples.language_model.run --profile wikitext2-cpu

Nothing is downloaded: the raw text is read from ``--data-dir`` (default
``../shared/data/wikitext-2`` or ``../shared/data/multi30k``, by profile).
For WikiText-103 see README.md next to this file.
"""

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from examples.language_model import corpora, shipped_teacher
from examples.language_model.perplexity_table import write_report
from examples.language_model.training_flags import (  # noqa: F401  (also read as recipe.X)
    adaptive_embedding, arch_flags, row_flags, student_embedding_params, student_flags,
    teacher_flags)
from examples.language_model.profiles import (  # noqa: F401  (also read as recipe.X elsewhere)
    ALL_ROWS, COMMON_TRAIN, DENSE_HEAD_ROWS, MAIN_ROWS, POST_TRAINING_ROWS, PROFILES, ROWS,
    STUDENT_BETA, TEACHER_DESCRIPTION, Profile)
from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.cli.stats import embedding_summary, model_config
from examples.multi30k import run as recipe  # the translation recipe's stages, imported
from examples.multi30k.commands import log_like_fairseq_cli

REPO = recipe.REPO
run, train, write_json = recipe.run, recipe.train, recipe.write_json
with_overrides = recipe.with_overrides  # any profile dataclass with student_train/max_tokens
fairseq_tool, device_flags = recipe.fairseq_tool, recipe.device_flags

logger = logging.getLogger("examples.language_model.run")  # __name__ is __main__ under -m
PLUGIN = REPO / "fairseq_distilled_emb"


_EVAL_LM = re.compile(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)")
_EVAL_SPEED = re.compile(r"Evaluated ([\d,]+) tokens in ([\d.]+)s \(([\d.]+) tokens/s\)")


def evaluate(data_bin: Path, checkpoint: Path, out_dir: Path, results: Path, args,
             profile: Profile, name: str, subset: str = "test") -> Dict:
    """Stock fairseq-eval-lm on ``subset``, cut as in training (corpora.eval_flags)."""
    done = out_dir / ("eval.json" if subset == "test" else f"eval.{subset}.json")
    if done.exists():
        return json.loads(done.read_text())
    log = results / "logs" / (f"{name}.eval-lm.log" if subset == "test"
                              else f"{name}.{subset}.eval-lm.log")
    output = run([fairseq_tool("eval-lm"), str(data_bin), "--user-dir", str(PLUGIN),
                  "--path", str(checkpoint), "--gen-subset", subset,
                  "--max-tokens", str(profile.max_tokens)] + corpora.eval_flags(profile)
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


def scores(data_bin: Path, checkpoint: Path, out_dir: Path, results: Path, args,
           profile: Profile, name: str) -> Dict:
    """Test perplexity, and valid perplexity too where the profile says (``score_valid``)."""
    payload = evaluate(data_bin, checkpoint, out_dir, results, args, profile, name)
    if profile.score_valid:
        valid = evaluate(data_bin, checkpoint, out_dir, results, args, profile, name, "valid")
        payload = {**payload, "valid_perplexity": valid["perplexity"]}
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


#: rows trained from scratch with the teacher's recipe: sized from the teacher's shape, so they
#: need nothing of its file and run without its (hours-long) stage
FROM_SCRATCH = ("dense", "adaptive")


def needs_teacher(rows: List[str]) -> bool:
    """Whether any of ``rows`` starts from the teacher (a student, a post-training export of the
    teacher or of a student, the teacher trained on); a post-training export of a from-scratch
    row (adaptive input's bands in codes) does not."""
    return any(row == "teacher" or (needs_teacher([POST_TRAINING_ROWS[row].base])
                                    if row in POST_TRAINING_ROWS
                                    else ROWS[row].kind not in FROM_SCRATCH) for row in rows)


def post_training_row(row: str, base: Dict, base_checkpoint: Path, data_bin: Path, results: Path,
                      args, profile: Profile) -> Dict:
    """Export ``base_checkpoint`` with ``--embedding-bits`` (a stage: skipped when the file
    exists), count its stored embedding bytes as ``stats`` does and score it."""
    spec = POST_TRAINING_ROWS[row]
    out_dir = results / "rows" / row
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = out_dir / f"int{spec.bits}.pt"
    if not exported.exists():  # export writes atomically: the file exists only once complete
        run([sys.executable, "-m", "fairseq_distilled_emb", "export", str(base_checkpoint),
             str(exported), "--embedding-bits", str(spec.bits)],
            results / "logs" / f"{row}.export.log")
    state = load_checkpoint(exported)
    stored = embedding_summary(state["model"], model_config(state))["embedding_bytes"]
    measured = scores(data_bin, exported, out_dir, results, args, profile, row)
    return {"embedding_params": base["embedding_params"], "total_params": base.get("total_params"),
            "embedding_bytes": stored,
            **measured, "description": spec.description, "updates": 0, "train_seconds": 0}


def run_rows(args, profile: Profile, results: Path, data_bin: Path,
             teacher_ckpt: Optional[Path], rows: Dict[str, Dict]) -> Dict[str, Dict]:
    """Every requested row into ``rows`` (which holds the teacher's, unless only from-scratch
    rows were asked for); a post-training row runs the row it exports first when that was not
    requested before it."""
    vocab = dictionary_size(data_bin)

    def trained(row: str) -> Dict:
        if row in rows:
            return rows[row]
        if row in POST_TRAINING_ROWS:
            base = POST_TRAINING_ROWS[row].base
            base_dir = teacher_ckpt.parent if base == "teacher" else results / "rows" / base
            rows[row] = post_training_row(row, trained(base), base_dir / "checkpoint_best.pt",
                                          data_bin, results, args, profile)
            return rows[row]
        save_dir = results / "rows" / row
        spec = ROWS[row]
        flags = row_flags(row, profile, args, vocab, teacher_ckpt)
        summary = train(data_bin, save_dir, flags, row, results)
        if spec.kind == "adaptive":
            summary["embedding_params"] = adaptive_embedding(vocab, profile.dim,
                                                             spec.compression)[2]
        elif spec.kind != "student":  # a dense model's embedding: V × its own width
            summary["embedding_params"] = vocab * int(flags[flags.index("--decoder-embed-dim") + 1])
        summary["embedding_bytes"] = 4 * summary["embedding_params"]  # fp32, as trained
        measured = scores(data_bin, save_dir / "checkpoint_best.pt", save_dir, results, args,
                          profile, row)
        rows[row] = {**summary, **measured, "description": spec.description}
        return rows[row]

    for row in args.rows or profile.rows:
        trained(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--results", type=Path,
                        help="results directory (default results/lm-multi30k-<profile>)")
    parser.add_argument("--data-dir", type=Path,
                        help="the raw corpus: WikiText-2's wiki.{train,valid,test}.tokens.gz "
                        "(default ../shared/data/wikitext-2) for the wikitext2-* profiles, else "
                        "Multi30k task-1's train.en.gz, val.en.gz, test_2016_flickr.en.gz "
                        "(default ../shared/data/multi30k)")
    parser.add_argument("--vocab-size", type=int,
                        help="sentencepiece vocabulary, or WikiText-2's most frequent words kept "
                        "(default: the profile's; 0: all)")
    parser.add_argument("--rows", nargs="*", choices=ALL_ROWS, help="student/baseline rows to run")
    parser.add_argument("--shipped-teacher", type=Path, metavar="DIR",
                        help="use the teacher packed in DIR (examples/language_model/"
                        "shipped_teacher.py) instead of training one (default: the profile's)")
    parser.add_argument("--train-teacher", action="store_true",
                        help="train the teacher even where the profile ships one")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="train in fp32 on GPU")
    parser.add_argument("--max-tokens", type=int, help="override the profile's --max-tokens")
    parser.add_argument("--student-updates", type=int,
                        help="override the profile's fine-tuning updates per student row")
    args = parser.parse_args(argv)
    log_like_fairseq_cli()
    import torch

    args.use_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    profile = with_overrides(PROFILES[args.profile], args)
    args.data_dir = args.data_dir or corpora.DEFAULT_DATA[profile.corpus]
    if args.shipped_teacher and args.train_teacher:
        parser.error("--shipped-teacher and --train-teacher: give one of them")
    shipped = None if args.train_teacher else args.shipped_teacher or profile.shipped_teacher
    if shipped and args.vocab_size is not None:
        parser.error(f"--vocab-size: the shipped teacher ({shipped}) brings its own dictionary; "
                     "add --train-teacher to train one on another vocabulary")
    if shipped:
        shipped_teacher.verify(shipped)
    default_name = args.profile if profile.corpus == "wikitext2" else f"multi30k-{args.profile}"
    results = args.results or REPO / "results" / f"lm-{default_name}"
    results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_bin = corpora.prepare(args, profile, results, shipped and shipped / "dict.txt")
    vocab = dictionary_size(data_bin)
    rows, teacher_ckpt = {}, None
    if needs_teacher(args.rows or profile.rows):
        teacher_dir = results / "teacher"
        teacher_summary = (shipped_teacher.install(shipped, data_bin, teacher_dir) if shipped else
                           train(data_bin, teacher_dir, teacher_flags(profile, args), "teacher",
                                 results))
        teacher_ckpt = teacher_dir / "checkpoint_best.pt"
        teacher_scores = scores(data_bin, teacher_ckpt, teacher_dir, results, args, profile,
                                "teacher")
        rows["teacher"] = {**teacher_summary, **teacher_scores,
                           "embedding_params": vocab * profile.dim,
                           "embedding_bytes": 4 * vocab * profile.dim,
                           "description": TEACHER_DESCRIPTION}
    else:
        logger.info("only from-scratch rows asked for: the teacher stage is not run")
    rows = run_rows(args, profile, results, data_bin, teacher_ckpt, rows)
    test_sentences = sum(1 for _ in open(results / "data" / "test.raw.en", encoding="utf-8"))
    meta = {"profile": args.profile, "corpus": profile.corpus, "notes": profile.notes,
            "vocab": vocab, "dim": profile.dim, "test_sentences": test_sentences,
            "sample_flags": " ".join(corpora.eval_flags(profile)),
            "device": (torch.cuda.get_device_name(0) if args.use_gpu
                       else f"cpu ({os.cpu_count()} cores)"),
            "wall_seconds": time.perf_counter() - started,
            "command": " ".join(["python", "-m", "examples.language_model.run"] + sys.argv[1:])}
    print(write_report(results, rows, meta))
    logger.info(f"finished in {meta['wall_seconds']:.0f}s (stages found done were skipped)")


if __name__ == "__main__":
    main()
