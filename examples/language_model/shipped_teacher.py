#!/usr/bin/env python
"""A language-model teacher trained by a profile and shipped beside the recipe, so that a run (or a
later session whose disk did not keep ``results/``) spends its hours on the students, not on
re-training the teacher: the WikiText-2 cpu teacher takes ~5 hours of 2 CPU cores.

A shipped teacher is a directory of four files, as the translation demo's (examples/multi30k/
demo_teacher/):

- ``teacher_fp16.pt``: ``fairseq-distilled-emb export --fp16`` of the teacher's checkpoint_best.pt
  (no optimizer state; loads with torch's weights-only unpickler; starts fairseq-train
  ``--teacher-path`` and ``--finetune-from-model``);
- ``dict.txt``: the fairseq dictionary it was trained with (the recipe binarizes with it, and a
  data-bin built with another one is refused: word ids would not match the teacher's rows);
- ``train.json``: the summary of the training run (updates, best valid loss, seconds, settings);
- ``SHA256SUMS``: checked before anything is used.

Pack one from a finished run (then commit the directory and record it as the profile's
``shipped_teacher``):

    python -m examples.language_model.shipped_teacher results/lm-wikitext2-cpu \\
        examples/language_model/wikitext2_cpu_teacher
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import Dict

from examples.multi30k import run as recipe
from examples.multi30k.commands import file_sha256, log_like_fairseq_cli

SHIPPED_FILES = ("teacher_fp16.pt", "dict.txt", "train.json")


def pack(results: Path, shipped: Path) -> None:
    """``results``' finished teacher (its train.json exists) into a new ``shipped`` directory."""
    teacher = results / "teacher"
    if not (teacher / "train.json").exists():
        raise SystemExit(f"error: {teacher} has no finished training (train.json): finish the "
                         "teacher stage first")
    if shipped.exists():
        raise SystemExit(f"error: {shipped} exists: pass a new directory (nothing is replaced)")
    partial = shipped.with_name(shipped.name + ".partial")  # renamed once complete
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    recipe.run([sys.executable, "-m", "fairseq_distilled_emb", "export", "--fp16",
                str(teacher / "checkpoint_best.pt"), str(partial / "teacher_fp16.pt")],
               results / "logs" / "teacher.ship.log")
    shutil.copyfile(results / "data-bin" / "dict.txt", partial / "dict.txt")
    shutil.copyfile(teacher / "train.json", partial / "train.json")
    (partial / "SHA256SUMS").write_text(
        "".join(f"{file_sha256(partial / name)}  {name}\n" for name in SHIPPED_FILES))
    partial.rename(shipped)


def verify(shipped: Path) -> None:
    """Every shipped file's SHA-256 as recorded when it was packed (the translation recipe's
    check): a corrupted or swapped teacher or dictionary is refused before anything uses it."""
    if not (shipped / "SHA256SUMS").is_file():
        raise SystemExit(f"error: {shipped / 'SHA256SUMS'} not found: --shipped-teacher takes a "
                         "directory written by python -m examples.language_model.shipped_teacher")
    recipe.verify_shipped_teacher(shipped)


def check_dictionary(shipped: Path, data_bin: Path) -> None:
    """The data-bin's words must have the ids the teacher's rows were trained for."""
    if (data_bin / "dict.txt").read_bytes() != (shipped / "dict.txt").read_bytes():
        raise SystemExit(f"error: {data_bin / 'dict.txt'} differs from the shipped teacher's "
                         f"{shipped / 'dict.txt'} (another corpus or --vocab-size): pass another "
                         "--results, or --train-teacher to train a teacher on this data")


def install(shipped: Path, data_bin: Path, teacher_dir: Path) -> Dict:
    """The translation recipe's install (the verified shipped teacher copied to
    ``teacher_dir/checkpoint_best.pt`` unless another teacher is there, its training summary
    returned), once ``data_bin``'s dictionary is checked against it."""
    check_dictionary(shipped, data_bin)
    return recipe.install_shipped_teacher(shipped, teacher_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results directory whose teacher finished")
    parser.add_argument("shipped", type=Path, help="the new directory to write")
    args = parser.parse_args()
    log_like_fairseq_cli()
    pack(args.results, args.shipped)


if __name__ == "__main__":
    main()
