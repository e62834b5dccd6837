"""Sequence-level knowledge distillation's data stage [C] (Kim & Rush 2016, ``--train-data teacher``
or ``both``): the teacher translates the training source once, and the rows train on its output
alone or beside the gold targets. Its own module because only these rows need it; the other stages
(``stages.py``) never read the teacher's output."""

import shutil
import time
from pathlib import Path

from examples.multi30k.commands import device_flags, fairseq_tool, run, write_json
from examples.multi30k.stages import PLUGIN, Profile, binarize
from fairseq_distilled_emb import evaluation


def distill_training_data(args, profile: Profile, results: Path, data_bin: Path,
                          teacher: Path) -> Path:
    """Sequence-level KD [C] (Kim & Rush 2016): the teacher's beam-search translation (the
    profile's beam) of every training source sentence, aligned by id (the count is checked),
    binarized with the teacher's dictionary.
    Returns the data-bin whose ``train`` split is the teacher's output (valid/test stay gold)."""
    kd_bin = results / "data-bin-kd"
    if (kd_bin / "preprocess.done").exists():
        return kd_bin
    work = results / "data"
    source, target = args.source_lang, args.target_lang
    sources = (work / f"train.spm.{source}").read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    output = run([fairseq_tool("generate"), str(data_bin), "--user-dir", str(PLUGIN),
                  "--path", str(teacher), "--gen-subset", "train", "--beam", str(profile.beam),
                  "--batch-size", str(profile.eval_batch_size), "--required-batch-size-multiple", "1",
                  "--max-len-a", "1.2", "--max-len-b", "10"] + device_flags(args.use_gpu, False),
                 results / "logs" / "teacher.train.generate.log")
    translations = evaluation.hypotheses_by_id(output, len(sources), prefix="H-")
    (work / f"train.kd.{source}").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (work / f"train.kd.{target}").write_text("\n".join(translations) + "\n", encoding="utf-8")
    binarize(results, kd_bin, [
        "--source-lang", source, "--target-lang", target, "--trainpref", f"{work}/train.kd",
        "--validpref", f"{work}/valid.spm", "--testpref", f"{work}/test.spm",
        "--srcdict", str(data_bin / f"dict.{source}.txt"), "--joined-dictionary",
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
