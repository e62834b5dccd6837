"""The Multi30k recipe's sequence-level KD (``--train-data both``), CI-sized: a file of its own so
that pytest-xdist runs it beside the recipe's main test (``--dist loadfile``)."""

import json
import re
import sys

from helpers import raw_multi30k_dir, run_recipe


def test_sequence_kd_rows_train_on_gold_and_the_teachers_translations(multi30k_corpus, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "examples.multi30k.run",
               "--profile", "ci", "--device", "cpu", "--results", str(results),
               "--data-dir", str(raw_multi30k_dir(multi30k_corpus, tmp_path / "raw"))]
    # sequence-level KD: the recipe trains the teacher, then the teacher translates every
    # training sentence, and a row and its same-size dense baseline train on gold + teacher output
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
