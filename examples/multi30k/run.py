#!/usr/bin/env python
"""Multi30k translation between any two of its languages (--source-lang, --target-lang; de→en by
default): dense teacher → Distilled Embedding students and baselines → sacreBLEU table.

Every stage runs stock fairseq commands (fairseq-preprocess, fairseq-train, fairseq-generate) and writes
its output under ``--results``; a stage whose output exists is skipped, so an interrupted run continues
where it stopped. Profiles: ``ci`` (a few hundred sentences, a few updates: the test of this script),
``demo`` (``make demo``: a short run, ≤ 20 minutes on 2 CPU cores), ``cpu`` (every row with the
benchmark's teacher, budgets sized for ≤ 3 hours on 2 CPU cores) and ``full`` (``make benchmark``:
the teacher trained to early stopping, 2,000 updates per row; use a GPU).

    python -m examples.multi30k.run --profile demo --results results/multi30k-demo

Run it as a module from the repository root (``examples`` and ``benchmarks`` are packages of the
checkout, imported by name; nothing edits ``sys.path``).
"""

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

from benchmarks import report
from examples.multi30k.profiles import (  # noqa: F401  (also read as recipe.X by other scripts)
    ALL_ROWS,
    COMMON_TRAIN,
    MODEL_128,
    MODEL_256,
    PROFILES,
    ROWS,
    SVD_LINEAR,
    TENSOR_TRAIN,
    Row,
    cosine_fine_tuning,
)
from examples.multi30k.stages import (  # noqa: F401  (the stages, also for other scripts)
    REPO,
    PLUGIN,
    SPLITS,
    Profile,
    binarize,
    device_flags,
    evaluate,
    export_size,
    fairseq_tool,
    install_shipped_teacher,
    language_pair,
    prepare,
    run,
    sentencepiece_encode,
    train,
    train_command,
    verify_shipped_teacher,
    write_json,
)
from examples.multi30k.commands import log_like_fairseq_cli
from examples.multi30k.sequence_kd import training_data  # noqa: F401  (also recipe.training_data)
from examples.multi30k.training_flags import (  # noqa: F401  (the flags, also for other scripts)
    arch_settings,
    dense_flags,
    dense_target_params,
    row_flags,
    student_flags,
    teacher_flags,
)


logger = logging.getLogger("examples.multi30k.run")  # __name__ is __main__ under -m


TEACHER_DESCRIPTION = "dense teacher (stock transformer)"


# What a row trains on: the gold targets, the teacher's beam output (sequence-level KD [C]) or both.
TRAINING_DATA = ("gold", "teacher", "both")
#: Multi30k task 1's languages (train, val and test_2016_flickr exist for each)
LANGUAGES = ("de", "en", "fr", "cs")
#: the direction of the shipped demo teacher (examples/multi30k/demo_teacher)
SHIPPED_PAIR = ("de", "en")


#: what benchmarks/schedule_sweep.py ranks points by: (score key, its label, higher is better)
SCORE = ("bleu", "valid BLEU", True)


def with_overrides(profile: Profile, args) -> Profile:
    """The profile with the command line's batch size / student budget overrides applied."""
    changes = {"max_tokens": args.max_tokens or profile.max_tokens}
    if args.student_updates:
        student_train = list(profile.student_train)
        student_train[student_train.index("--max-update") + 1] = str(args.student_updates)
        changes["student_train"] = student_train
        if hasattr(profile, "updates_from_compression"):  # (the LM's profiles have none)
            changes["updates_from_compression"] = {}  # the command line's budget is every row's
    return replace(profile, **changes)


def dictionary_size(data_bin: Path) -> int:
    """Symbols in fairseq's joined dictionary: 4 specials + one per line of a dict.<lang>.txt."""
    dictionary = sorted(data_bin.glob("dict.*.txt"))[0]
    return 4 + sum(1 for _ in open(dictionary, encoding="utf-8"))


def run_row(row: str, args, profile: Profile, results: Path, data_bin: Path, row_data: Path,
            teacher_ckpt: Path) -> Dict:
    """Train, score and export one row (a row trained on teacher output is named
    ``<row>+<data>``). A dense row needs nothing of the teacher's: its size is matched to the
    teacher's shape, so with ``--jobs`` it trains while the teacher does."""
    vocab = dictionary_size(data_bin)
    name = row_name(row, args)
    save_dir = results / "rows" / name
    spec = ROWS[row]
    flags = row_flags(row, profile, args, vocab, teacher_ckpt)
    summary = train(row_data, save_dir, flags, name, results)
    if spec.kind != "student":
        summary["embedding_params"] = vocab * int(flags[flags.index("--encoder-embed-dim") + 1])
    checkpoint = save_dir / "checkpoint_best.pt"
    scores = evaluate(data_bin, checkpoint, save_dir, results, args, profile, name)
    description = spec.description + ("" if args.train_data == "gold" else
                                      f"; trained on {args.train_data} data (seq-KD)")
    return {**summary, **scores, "description": description, "from_teacher": spec.kind != "dense",
            "exported_bytes": export_size(checkpoint, save_dir, results, name)}


def row_name(row: str, args) -> str:
    """A row's table name: ``<row>+<data>`` when it trains on teacher output."""
    return row if args.train_data == "gold" else f"{row}+{args.train_data}"


def run_all(args, profile: Profile, results: Path, data_bin: Path,
            teacher_stage) -> Tuple[Dict[str, Dict], List[str]]:
    """The teacher stage (``teacher_stage()`` → its table row), then every row, in order.

    With ``--jobs N`` (a GPU has room for many of these small models at once) up to N stages run
    at the same time: the dense rows start beside the teacher (they do not use it), the others as
    soon as it is done. A failing row is reported and the others carry on; the run then ends with
    an error listing the failed rows (returned second, after the finished rows' table rows). With
    one job the order and fail-fast behaviour are the sequential recipe's."""
    wanted = profile.rows if args.rows is None else args.rows
    teacher_ckpt = results / "teacher" / "checkpoint_best.pt"
    if args.jobs == 1:
        rows = {"teacher": teacher_stage()}
        row_data = training_data(args, profile, results, data_bin, teacher_ckpt, args.train_data)
        for row in wanted:
            rows[row_name(row, args)] = run_row(row, args, profile, results, data_bin, row_data,
                                                teacher_ckpt)
        return rows, []
    early = [row for row in wanted if ROWS[row].kind == "dense" and args.train_data == "gold"]
    futures = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures["teacher"] = pool.submit(teacher_stage)
        for row in early:
            futures[row] = pool.submit(run_row, row, args, profile, results, data_bin, data_bin,
                                       teacher_ckpt)
        failed = {}
        if futures["teacher"].exception() is None:  # waits for the teacher; it is reported below
            try:
                row_data = training_data(args, profile, results, data_bin, teacher_ckpt,
                                         args.train_data)
            except BaseException as error:  # noqa: B036 (SystemExit from a failed command)
                logger.error(f"{args.train_data} training data failed: {first_line(error)}")
                failed[f"{args.train_data} training data"] = error
            else:
                for row in wanted:
                    if row not in early:
                        futures[row] = pool.submit(run_row, row, args, profile, results,
                                                   data_bin, row_data, teacher_ckpt)
        rows = {}
        for row, future in futures.items():
            try:
                rows[row if row == "teacher" else row_name(row, args)] = future.result()
            except BaseException as error:  # noqa: B036
                logger.error(f"{row} failed: {first_line(error)}")
                failed[row] = error
    ordered = ["teacher"] + [row_name(row, args) for row in wanted]
    return {name: rows[name] for name in ordered if name in rows}, list(failed)


def first_line(error: BaseException) -> str:
    """A failed stage's message in one line, for the log (the run's own error line follows)."""
    return str(error).splitlines()[0].removeprefix("error: ")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of jobs")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--results", type=Path, help="results directory (default results/multi30k-<profile>)")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "multi30k",
                        help="raw Multi30k task-1 files (*.de.gz, *.en.gz)")
    parser.add_argument("--source-lang", default="de", choices=LANGUAGES,
                        help="translate from this Multi30k language (default de)")
    parser.add_argument("--target-lang", default="en", choices=LANGUAGES,
                        help="into this one (default en)")
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
                        help="fine-tuning updates of every student row (and of teacher_continued), "
                        "instead of the profile's budgets")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="run up to N training/decoding stages at once (a GPU has room for "
                        "several of these small models; the dense rows then train beside the "
                        "teacher); default 1: one stage after the other")
    args = parser.parse_args(argv)
    log_like_fairseq_cli()
    import torch

    args.use_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    profile = with_overrides(PROFILES[args.profile], args)
    pair = (args.source_lang, args.target_lang)
    if pair[0] == pair[1]:
        parser.error(f"--source-lang and --target-lang are both {pair[0]}: give two languages")
    suffix = "" if pair == SHIPPED_PAIR else f"-{pair[0]}-{pair[1]}"
    results = args.results or REPO / "results" / f"multi30k-{args.profile}{suffix}"
    language_pair(results, *pair)  # refuses a results directory prepared for another direction
    results.mkdir(parents=True, exist_ok=True)
    shipped = None if args.train_teacher else profile.shipped_teacher
    if shipped and pair != SHIPPED_PAIR:
        logger.info(f"the shipped teacher translates {SHIPPED_PAIR[0]}→{SHIPPED_PAIR[1]}: training "
                    f"a {pair[0]}→{pair[1]} teacher with the profile's recipe")
        shipped = None
    if shipped:
        verify_shipped_teacher(shipped)
    data_bin = prepare(args, profile, results, shipped)
    teacher_dir = results / "teacher"
    teacher_summary = install_shipped_teacher(shipped, teacher_dir) if shipped else None
    teacher_ckpt = teacher_dir / "checkpoint_best.pt"
    vocab = dictionary_size(data_bin)
    dim = int(arch_settings(profile)["--encoder-embed-dim"])

    def teacher_stage() -> Dict:
        summary = teacher_summary or train(data_bin, teacher_dir, teacher_flags(profile, args),
                                           "teacher", results)
        scores = evaluate(data_bin, teacher_ckpt, teacher_dir, results, args, profile, "teacher")
        return {**summary, **scores, "embedding_params": vocab * dim,
                "description": TEACHER_DESCRIPTION,
                "exported_bytes": export_size(teacher_ckpt, teacher_dir, results, "teacher")}

    rows, failed = run_all(args, profile, results, data_bin, teacher_stage)
    notes = f"{profile.notes} {profile.budget_note()}"
    meta = {"profile": args.profile, "notes": notes, "vocab": vocab, "dim": dim, "pair": pair,
            "device": torch.cuda.get_device_name(0) if args.use_gpu else "cpu",
            "command": " ".join(["python", "-m", "examples.multi30k.run"] + sys.argv[1:])}
    if "teacher" in rows:
        print(report.write_report(results, rows, meta))
    if failed:
        raise SystemExit(f"error: {len(failed)} stage(s) failed: {', '.join(failed)} (their logs "
                         f"are under {results / 'logs'}; the table holds the others; a re-run "
                         "resumes every finished stage)")


if __name__ == "__main__":
    main()
