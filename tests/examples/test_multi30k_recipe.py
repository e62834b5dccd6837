"""The Multi30k recipe script itself, CI-sized: every stage through the real commands, the table,
resuming, and sequence-level KD from the same teacher (``--train-data both``)."""

import hashlib
import json
import re
import sys

from helpers import check_recipe_bleu, raw_multi30k_dir, run_recipe


def test_ci_profile_runs_every_stage_and_writes_the_table(multi30k_corpus, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "examples.multi30k.run",
               "--profile", "ci", "--device", "cpu", "--results", str(results),
               "--data-dir", str(raw_multi30k_dir(multi30k_corpus, tmp_path / "raw"))]
    first = run_recipe(command, timeout=900)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    # each training stage reports its progress: the update against its budget and the loss
    assert re.search(r" {2}teacher\.train: update 12/12, valid loss [\d.]+ \(\d+s\)$",
                     first.stdout + first.stderr, re.MULTILINE), first.stderr[-3000:]

    saved = json.loads((results / "results.json").read_text())
    expected_rows = ["teacher", "distilled_8x"]
    assert list(saved["rows"]) == expected_rows
    check_recipe_bleu(results, saved["rows"], multi30k_corpus.lines("test", "en"), "en")
    for row in saved["rows"].values():
        assert "BLEU" not in row["signature"]
        assert row["sentences"] == len(multi30k_corpus.lines("test", "en"))
        assert row["embedding_params"] > 0 and row["total_params"] > row["embedding_params"]
        # the fp16 export (no optimizer state, half-size weights) is what ships: it must be smaller
        assert 0 < row["exported_bytes"] < row["checkpoint_bytes"]
        assert row["eval_seconds"] > 0 and row["train_seconds"] > 0
    rows = saved["rows"]
    assert rows["distilled_8x"]["embedding_params"] < rows["teacher"]["embedding_params"] / 7
    assert rows["distilled_8x"]["reconstruction_error"] <= rows["distilled_8x"][
        "svd_error_rank_r_minus_1"] + 1e-4
    table = (results / "results.md").read_text()
    assert all(f"| {name} |" in table for name in expected_rows)
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in table
    assert "| Δ teacher |" in table and "| decode × teacher |" in table and "fp16 export MB" in table
    assert (results / "frontier.png").stat().st_size > 1000

    # resumable: a second run skips every stage (no command runs) and rewrites the same table
    second = run_recipe(command, timeout=300)
    assert second.returncode == 0 and "$ " not in second.stdout + second.stderr
    assert json.loads((results / "results.json").read_text())["rows"] == saved["rows"]

    # another budget for a finished row is refused, not answered with the old model
    student = results / "rows" / "distilled_8x"
    before = {path: path.stat().st_mtime_ns for path in student.iterdir()}
    changed = run_recipe(command + ["--student-updates", "7", "--rows", "distilled_8x"],
                         timeout=300)
    assert changed.returncode == 1 and changed.stderr.strip().splitlines()[-1] == (
        f"error: {student} was trained with other settings (--max-update 6 → 7); move it away "
        "to train it again, or pass another --results")
    assert {path: path.stat().st_mtime_ns for path in student.iterdir()} == before

    # a stage interrupted after fairseq saved checkpoint_last.pt (no train.json yet) resumes
    # through fairseq's own restore, for the stock teacher too (torch >= 2.6 safe loading)
    (results / "teacher" / "train.json").unlink()
    third = run_recipe(command + ["--rows"], timeout=300)  # the teacher alone
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]
    first_run, resumed = (results / "logs" / "teacher.train.log").read_text().split("\n# run again ")
    assert "No existing checkpoint found" in first_run  # the first run's log is kept, not replaced
    assert "loaded checkpoint" in resumed.lower()
    # fairseq's restore trained it one update more (13/12): a student of the teacher it was is
    # not reused as a student of this one
    recorded = json.loads((student / "train.json").read_text())["settings"]["teacher sha256"]
    teacher = hashlib.sha256((results / "teacher" / "checkpoint_best.pt").read_bytes())
    assert recorded != teacher.hexdigest()[:16], "the resumed teacher did not change"
    other = run_recipe(command, timeout=300)
    assert other.returncode == 1 and other.stderr.strip().splitlines()[-1] == (
        f"error: {student} was trained with other settings (teacher sha256 {recorded} → "
        f"{teacher.hexdigest()[:16]}); move it away to train it again, or pass another --results")
    assert {path: path.stat().st_mtime_ns for path in student.iterdir()} == before

    # sequence-level KD from the same teacher: it translates every training sentence, and a row
    # and its same-size dense baseline train on gold + teacher output
    check_sequence_kd(results, command)


def check_sequence_kd(results, command):
    seqkd = run_recipe(command + ["--train-data", "both", "--rows", "distilled_8x", "dense_8x"],
                       timeout=900)
    assert seqkd.returncode == 0, (seqkd.stdout + seqkd.stderr)[-3000:]
    sources = (results / "data" / "train.spm.de").read_text(encoding="utf-8").splitlines()
    translations = (results / "data" / "train.kd.en").read_text(encoding="utf-8").splitlines()
    raw = (results / "data" / "train.raw.de").read_text(encoding="utf-8").splitlines()
    assert len(sources) == len(raw) == len(translations) == 300  # the ci profile's 300 sentences
    assert json.loads((results / "data-bin-kd" / "distill.json").read_text())["sentences"] == len(
        sources)
    assert all(translations)  # one non-empty hypothesis per sentence, in id order
    # binarized with the teacher's dictionary, so the teacher's embedding rows still line up
    for lang in ("de", "en"):
        assert (results / "data-bin-kd" / f"dict.{lang}.txt").read_bytes() == (
            results / "data-bin" / f"dict.{lang}.txt").read_bytes()
    # "both": fairseq's translation task concatenates train (gold) and train1 (the teacher's)
    log = (results / "logs" / "distilled_8x+both.train.log").read_text()
    pattern = r"loaded ([\d,]+) examples from: \S*/train1?\.de-en\.de"
    loaded = [int(n.replace(",", "")) for n in re.findall(pattern, log)]
    assert loaded == [len(sources), len(sources)]
    rows = json.loads((results / "results.json").read_text())["rows"]
    assert list(rows) == ["teacher", "distilled_8x+both", "dense_8x+both"]
    assert rows["distilled_8x+both"]["updates"] == 6
    assert rows["distilled_8x+both"]["from_teacher"] and not rows["dense_8x+both"]["from_teacher"]
    dense_log = (results / "logs" / "dense_8x+both.train.log").read_text()
    assert "data-bin-both" in dense_log  # the same-size dense model trains on the same data
