"""The benchmark report: the comparisons against the teacher that the targets are judged on."""

from benchmarks import report


def rows():
    return {
        "teacher": {"bleu": 37.0, "sentences_per_second": 20.0, "embedding_params": 2_000_000,
                    "checkpoint_bytes": 90_000_000, "exported_bytes": 15_000_000},
        "distilled_8x": {"bleu": 36.25, "sentences_per_second": 25.0, "embedding_params": 250_000},
        "unfinished": {"embedding_params": 125_000},
    }


def test_each_row_is_compared_with_the_teacher():
    compared = report.versus_teacher(rows())
    assert compared["teacher"]["bleu_vs_teacher"] == 0.0
    assert compared["teacher"]["decode_vs_teacher"] == 1.0
    assert compared["distilled_8x"]["bleu_vs_teacher"] == -0.75
    assert compared["distilled_8x"]["decode_vs_teacher"] == 1.25
    # a row without BLEU yet (an interrupted run's report) gets no comparison rather than a crash
    assert "bleu_vs_teacher" not in compared["unfinished"]


def test_table_shows_comparisons_sizes_in_megabytes_and_dashes_for_missing_values():
    table = report.markdown_table(rows())
    teacher_line = next(line for line in table.splitlines() if line.startswith("| teacher |"))
    assert "| 90.0 |" in teacher_line and "| 15.0 |" in teacher_line
    row_line = next(line for line in table.splitlines() if line.startswith("| distilled_8x |"))
    assert "| -0.75 |" in row_line and "| 1.25 |" in row_line
    assert "| – |" in table.splitlines()[-1]
