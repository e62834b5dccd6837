"""The Multi30k recipe in the other direction (En→De), CI-sized, and its --jobs mode.

A file of its own so that pytest-xdist (``make test``: ``--dist loadfile``) runs it beside the
De→En recipe test, the suite's longest."""

import json
import sys

from helpers import check_recipe_bleu, raw_multi30k_dir, run_recipe


def test_ci_profile_in_the_other_direction_en_de_with_jobs(multi30k_corpus, tmp_path):
    """Every stage (prepare, train, decode, score, export) translating En→De, with ``--jobs``: the
    dense row trains beside the teacher, and a row that fails (its save directory is a file) is
    reported while the others finish."""
    results = tmp_path / "results"
    (results / "rows").mkdir(parents=True)
    (results / "rows" / "svd_linear_8x").write_text("in the way\n")
    command = [sys.executable, "-m", "examples.multi30k.run",
               "--profile", "ci", "--device", "cpu", "--results", str(results),
               "--data-dir", str(raw_multi30k_dir(multi30k_corpus, tmp_path / "raw")),
               "--source-lang", "en", "--target-lang", "de"]
    jobs = run_recipe(command + ["--jobs", "3", "--rows", "distilled_8x", "svd_linear_8x",
                                 "dense_8x"], timeout=900)
    assert jobs.returncode == 1, (jobs.stdout + jobs.stderr)[-3000:]
    assert (jobs.stdout + jobs.stderr).strip().splitlines()[-1] == (
        f"error: 1 stage(s) failed: svd_linear_8x (their logs are under {results / 'logs'}; the "
        "table holds the others; a re-run resumes every finished stage)")
    lines = (jobs.stdout + jobs.stderr).splitlines()  # the log lines: one stream, in order
    dense_started = next(i for i, line in enumerate(lines)
                         if "$ " in line and "--save-dir " + str(results / "rows" / "dense_8x") in line)
    teacher_done = next(i for i, line in enumerate(lines)
                        if "done in" in line and "logs/teacher.train.log" in line)
    assert dense_started < teacher_done  # the dense row did not wait for the teacher

    assert sorted(p.name for p in (results / "data-bin").glob("train.*.bin")) == [
        "train.en-de.de.bin", "train.en-de.en.bin"]
    saved = json.loads((results / "results.json").read_text())
    assert list(saved["rows"]) == ["teacher", "distilled_8x", "dense_8x"]
    check_recipe_bleu(results, saved["rows"], multi30k_corpus.lines("test", "de"), "de")
    assert all(row["exported_bytes"] > 0 for row in saved["rows"].values())
    assert (results / "results.md").read_text().startswith("# Multi30k En→De, ci profile")

    # the directory now holds en→de data: a de→en run on it is refused, nothing is touched
    before = sorted(p.name for p in results.rglob("*"))
    refused = run_recipe(command[:-4] + ["--rows"], timeout=300)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
        f"error: {results} was prepared for en→de; pass another --results for de→en")
    assert sorted(p.name for p in results.rglob("*")) == before
