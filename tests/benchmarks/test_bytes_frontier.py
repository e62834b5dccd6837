"""The bytes frontier's table and its int8-body points (the exports and decodes are the recipe's
own stages, tested through the recipe)."""

from benchmarks import bytes_frontier


def test_table_sorts_by_stored_bytes_and_compares_test_bleu_with_the_fp16_teacher():
    rows = [
        {"name": "teacher_int4", "method": "teacher, post-training codes", "embedding_bytes": 544_568,
         "fewer_than_fp32": 7.5, "file_bytes": 2_436_437, "valid_bleu": 28.24, "test_bleu": 28.85},
        {"name": "teacher_fp16", "method": "teacher", "embedding_bytes": 2_050_048,
         "fewer_than_fp32": 2.0, "file_bytes": 3_940_446, "valid_bleu": 28.66, "test_bleu": 29.30},
        {"name": "distilled_8x_ptq_int4", "method": "student, post-training codes",
         "embedding_bytes": 103_800, "fewer_than_fp32": 39.5, "file_bytes": 1_996_754,
         "test_bleu": 29.71},
    ]
    lines = bytes_frontier.table(rows).splitlines()
    assert lines[2:] == [
        "| teacher_fp16 | teacher | 2,050,048 | 2.0 | 3.94 | 28.66 | 29.30 | +0.00 |",
        "| teacher_int4 | teacher, post-training codes | 544,568 | 7.5 | 2.44 | 28.24 | 28.85 | -0.45 |",
        "| distilled_8x_ptq_int4 | student, post-training codes | 103,800 | 39.5 | 2.00 | – | 29.71 | "
        "+0.41 |",
    ]


def test_variant_points_are_added_for_named_points_with_codes_only():
    found = [{"name": "teacher_fp16", "bits": None, "method": "teacher"},
             {"name": "teacher_int8", "bits": 8, "method": "teacher, post-training codes"}]
    added = bytes_frontier.with_variant(found, ["teacher_fp16", "teacher_int8"], "int8body",
                                        {"int8_body": True}, "int8 body")
    assert added[2:] == [{"name": "teacher_int8_int8body", "bits": 8, "int8_body": True,
                          "method": "teacher, post-training codes, int8 body"}]
    added = bytes_frontier.with_variant(found, ["teacher_int8"], "log8", {"scale_format": "log8"},
                                        "1-byte log scales")
    assert added[2:] == [{"name": "teacher_int8_log8", "bits": 8, "scale_format": "log8",
                          "method": "teacher, post-training codes, 1-byte log scales"}]


def test_each_budget_picks_the_best_valid_point_that_fits_and_reports_its_test_score():
    def point(name, method, fewer, valid, test):
        return {"name": name, "method": method, "fewer_than_fp32": fewer, "valid_bleu": valid,
                "test_bleu": test}

    rows = [point("teacher_fp16", "teacher", 2.0, 38.0, 37.8),
            point("teacher_int4", "teacher, post-training codes", 7.8, 37.6, 37.5),
            point("teacher_int2", "teacher, post-training codes", 15.1, 33.0, 32.9),
            # fits ≥ 7.8 and ≥ 25; best on valid, worse on test: test must not decide
            point("distilled_8x_ptq_int8", "student, post-training codes", 26.3, 37.9, 37.0),
            point("distilled_8x_fp32_factors", "student, fp32 factors", 8.0, 37.7, 37.9),
            # ties with int8 on valid and is smaller: chosen at the budgets both fit
            point("distilled_8x_ptq_int6", "student, post-training codes", 32.0, 37.9, 37.1),
            point("distilled_16x_ptq_int4", "student, post-training codes", 73.6, 35.1, 35.4)]
    # the default budgets: the int4 teacher's own bytes (7.8x), then 25x, 50x and 90x
    lines = bytes_frontier.budget_choices(rows).splitlines()
    assert lines[2:] == [
        "| ≥ 7.8 | distilled_8x_ptq_int6 | 32.0 | 37.90 | 37.10 | -0.70 | teacher_int4 | 37.50 |",
        "| ≥ 25 | distilled_8x_ptq_int6 | 32.0 | 37.90 | 37.10 | -0.70 | none fits | – |",
        "| ≥ 50 | distilled_16x_ptq_int4 | 73.6 | 35.10 | 35.40 | -2.40 | none fits | – |",
    ]


def test_the_point_without_the_student_counts_the_teacher_trained_on_and_the_dense_model():
    """Equal training: the teacher given the students' updates and the same-size dense model,
    their E in codes, are what a user gets without the method, beside the untrained teacher's."""
    def point(name, method, fewer, valid, test):
        return {"name": name, "method": method, "fewer_than_fp32": fewer, "valid_bleu": valid,
                "test_bleu": test}

    codes = "post-training codes"
    rows = [point("teacher_fp16", "teacher", 2.0, 38.0, 37.8),
            point("teacher_int4", f"teacher, {codes}", 7.8, 37.6, 37.5),
            point("teacher_continued_int4", f"teacher continued, {codes}", 7.8, 38.2, 38.0),
            point("dense_8x_int4", f"dense, same total params, {codes}", 11.6, 37.0, 36.9),
            point("dense_8x_int2", f"dense, same total params, {codes}", 27.0, 30.0, 30.5),
            point("distilled_8x_ptq_int8", f"student, {codes}", 26.3, 37.9, 37.0)]
    lines = bytes_frontier.budget_choices(rows).splitlines()
    assert lines[0].endswith("| best point without the student | its test BLEU |")
    assert lines[2:] == [
        "| ≥ 7.8 | teacher_continued_int4 | 7.8 | 38.20 | 38.00 | +0.20 | teacher_continued_int4 "
        "| 38.00 |",
        "| ≥ 25 | distilled_8x_ptq_int8 | 26.3 | 37.90 | 37.00 | -0.80 | dense_8x_int2 | 30.50 |",
    ]


def test_every_point_counts_its_bytes_against_the_teachers_fp32_embedding(tiny_dense_checkpoint,
                                                                           tmp_path):
    """A narrower dense row's E is smaller than the teacher's before any codes: its "× fewer"
    must be against the teacher's fp32 E (what a user's budget is), not against its own."""
    from fairseq_distilled_emb.checkpoints import load_checkpoint

    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    (teacher_dir / "checkpoint_best.pt").symlink_to(tiny_dense_checkpoint.best)
    model = load_checkpoint(tiny_dense_checkpoint.best)["model"]
    vocab, dim = model["encoder.embed_tokens.weight"].shape
    assert bytes_frontier.teacher_fp32_embedding_bytes(tmp_path) == vocab * dim * 4
