"""The language-model recipe script itself, CI-sized: its stages through the real commands
(sentencepiece, fairseq-preprocess, fairseq-train, fairseq-eval-lm), the table, resuming, and a
finished row refused another budget."""

import json
import math
import re
import sys

from helpers import raw_multi30k_dir, run_recipe


def test_ci_profile_trains_scores_and_resumes(multi30k_corpus, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "examples.language_model.run", "--profile", "ci",
               "--device", "cpu", "--results", str(results),
               "--data-dir", str(raw_multi30k_dir(multi30k_corpus, tmp_path / "raw")),
               "--rows", "distilled_8x", "smaller_dim"]
    first = run_recipe(command, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    # the recipe's own lines in fairseq's format, on stdout
    # (fairseq's convention: the logger is the module's name; the command runner is shared)
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| INFO \| examples\.multi30k\.commands "
                     r"\| \$ \S+fairseq-train ",
                     first.stdout, re.MULTILINE), first.stdout[-3000:]

    saved = json.loads((results / "results.json").read_text())
    assert list(saved["rows"]) == ["teacher", "distilled_8x", "smaller_dim"]
    for name, row in saved["rows"].items():
        # the table's perplexity is the one fairseq-eval-lm printed for that row's checkpoint
        log = (results / "logs" / f"{name}.eval-lm.log").read_text()
        loss, perplexity = re.findall(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", log)[-1]
        assert (row["loss_base2"], row["perplexity"]) == (float(loss), float(perplexity))
        assert math.isclose(2 ** row["loss_base2"], row["perplexity"], rel_tol=1e-3)
    rows = saved["rows"]
    # the student keeps the teacher's body and compresses its embedding 8x (rank r: r·(V+d))
    assert rows["distilled_8x"]["embedding_params"] < rows["teacher"]["embedding_params"] / 7.5
    assert rows["distilled_8x"]["updates"] == 4 and rows["teacher"]["updates"] == 12

    # resumable: a second run runs no command and writes the same rows
    second = run_recipe(command, timeout=300)
    assert second.returncode == 0 and "$ " not in second.stdout + second.stderr
    assert json.loads((results / "results.json").read_text())["rows"] == saved["rows"]

    # another budget for the finished student is refused, and the student is left as it was
    student = results / "rows" / "distilled_8x"
    before = {path: path.stat().st_mtime_ns for path in student.iterdir()}
    changed = run_recipe(command + ["--student-updates", "5"], timeout=300)
    assert changed.returncode == 1 and changed.stderr.strip().splitlines()[-1] == (
        f"error: {student} was trained with other settings (--max-update 4 → 5); move it away "
        "to train it again, or pass another --results")
    assert {path: path.stat().st_mtime_ns for path in student.iterdir()} == before
