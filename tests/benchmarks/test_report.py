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


def test_frontier_keeps_each_methods_colour_and_names_every_method_in_the_legend():
    """Dense rows carry no export size (their exports were left out), so the second panel draws
    fewer methods than the first: each method must still have one colour in both panels, and
    the legend (first panel) must name the methods the second panel leaves out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    frontier_rows = {
        "teacher": {"bleu": 37.8, "total_params": 7_580_000, "exported_bytes": 15_200_000},
        "distilled_8x": {"bleu": 37.9, "total_params": 5_786_000, "exported_bytes": 12_100_000},
        "distilled_16x": {"bleu": 36.1, "total_params": 5_654_000, "exported_bytes": 11_600_000},
        "dense_8x": {"bleu": 36.1, "total_params": 5_786_000},
        "dense_16x": {"bleu": 35.0, "total_params": 5_654_000},
    }
    figure = report.frontier_figure(frontier_rows, "t")
    try:
        by_params, by_megabytes = figure.axes
        colours = [{line.get_label(): to_hex(line.get_color()) for line in axis.get_lines()}
                   for axis in (by_params, by_megabytes)]
        assert sorted(colours[0]) == ["dense", "distilled", "teacher"]
        assert sorted(colours[1]) == ["distilled", "teacher"]
        assert all(colours[1][method] == colours[0][method] for method in colours[1])
        assert len(set(colours[0].values())) == 3
        assert [text.get_text() for text in by_params.get_legend().get_texts()] == [
            "dense", "distilled", "teacher"]
        assert by_megabytes.get_legend() is None
    finally:
        plt.close(figure)
