"""The language-model recipe's scores: a WikiText-2 cpu/full row is scored on test and on valid
(where the by-bytes choices between rows are made), each once, by stock ``fairseq-eval-lm``; the
ci profiles score test only; the table has a valid column only when some row has a valid score.
The command is caught at ``run`` and answered with fairseq-eval-lm's own two result lines
(``fairseq_cli/eval_lm.py``'s formats), so nothing trains here."""

import json
from types import SimpleNamespace

import pytest

from examples.language_model import perplexity_table
from examples.language_model import run as lm

PERPLEXITY = {"test": (7.0521, 132.70), "valid": (7.0770, 135.01)}


def answer(monkeypatch):
    """Replace ``run`` by fairseq-eval-lm's result lines for the subset asked; return the
    subsets in the order they were asked."""
    asked = []

    def eval_lm(command, log_path, stdin=None):
        subset = command[command.index("--gen-subset") + 1]
        asked.append(subset)
        loss, perplexity = PERPLEXITY[subset]
        return ("Evaluated {:,} tokens in {:.1f}s ({:.2f} tokens/s)\n".format(245569, 120.5, 2037.92)
                + "Loss (base 2): {:.4f}, Perplexity: {:.2f}\n".format(loss, perplexity))

    monkeypatch.setattr(lm, "run", eval_lm)
    return asked


@pytest.mark.parametrize("profile_name, subsets", [
    ("wikitext2-cpu", ["test", "valid"]), ("wikitext2-full", ["test", "valid"]),
    ("wikitext2-ci", ["test"]), ("demo", ["test"])])
def test_rows_are_scored_on_valid_where_the_profile_says(monkeypatch, tmp_path, profile_name,
                                                        subsets):
    asked = answer(monkeypatch)
    args = SimpleNamespace(use_gpu=False)
    checkpoint, out = tmp_path / "checkpoint_best.pt", tmp_path / "row"
    checkpoint.write_bytes(b"weights")
    out.mkdir()
    profile = lm.PROFILES[profile_name]
    scores = lm.scores(tmp_path / "data-bin", checkpoint, out, tmp_path, args, profile, "row")
    assert asked == subsets
    expected = {"loss_base2": 7.0521, "perplexity": 132.70, "eval_tokens": 245569,
                "eval_tokens_per_second": 2037.92, "checkpoint_bytes": 7}
    if "valid" in subsets:
        expected["valid_perplexity"] = 135.01
        assert json.loads((out / "eval.valid.json").read_text())["perplexity"] == 135.01
    assert scores == expected
    # a second call finds both stages done and runs nothing
    assert lm.scores(tmp_path / "data-bin", checkpoint, out, tmp_path, args, profile,
                     "row") == expected and asked == subsets


def test_the_valid_column_appears_only_when_a_row_was_scored_on_valid():
    rows = {"teacher": {"perplexity": 132.7, "valid_perplexity": 135.01},
            "distilled_8x": {"perplexity": 150.0, "valid_perplexity": None}}
    header, _, teacher, student = perplexity_table.markdown_table(rows, 4 * 1000 * 64).splitlines()
    assert "| total params | valid ppl | test ppl | × teacher ppl |" in header
    assert "| – | 135.01 | 132.70 | 1.00 |" in teacher
    assert "| – | – | 150.00 | 1.13 |" in student
    without = {name: {"perplexity": row["perplexity"]} for name, row in rows.items()}
    assert "| total params | test ppl | × teacher ppl |" in perplexity_table.markdown_table(
        without, 4 * 1000 * 64).splitlines()[0]


def test_a_run_of_from_scratch_rows_alone_counts_bytes_against_the_teachers_shape():
    rows = {"adaptive_8x": {"embedding_bytes": 4 * 1039680, "perplexity": 140.0}}
    compared = perplexity_table.versus_teacher(rows, 4 * 33280 * 256)
    assert compared["adaptive_8x"]["embedding_fewer"] == 8.19
    assert "ppl_vs_teacher" not in compared["adaptive_8x"]
