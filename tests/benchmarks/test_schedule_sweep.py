"""The schedule sweep's points are commands fairseq accepts: a point's scheduler replaces the
profile's cosine, and cosine's ``--min-lr`` floor goes with it (fairseq's inverse_sqrt and fixed
schedulers reject the flag)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from fairseq import options

from benchmarks.common import load_recipe
from benchmarks.schedule_sweep import SCHEDULERS, point_flags, point_name


def parsed(flags):
    """``flags`` as fairseq-train parses them (SystemExit on an argument it rejects)."""
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["data-bin", *flags])


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_point_of_the_cosine_demo_profile_parses(scheduler):
    recipe = load_recipe()
    args = SimpleNamespace(use_gpu=False, fp16=True, max_tokens=None, student_updates=None)
    profile = recipe.with_overrides(recipe.PROFILES["demo"], args)
    row = recipe.student_flags("distilled_8x", profile, args, Path("teacher.pt"))
    assert "--min-lr" in row  # the demo's students use the cosine schedule

    flags = point_flags(row, 2e-3, scheduler, 40, 300, 0.5, 0)
    cfg = parsed(flags)

    assert (cfg.lr_scheduler, cfg.lr, cfg.warmup_updates, cfg.max_update) == (
        scheduler, [2e-3], 40, 300)
    assert cfg.embedding_distill_weight == 0.5
    if scheduler == "cosine":
        assert cfg.min_lr == pytest.approx(2e-5)
    else:
        assert "--min-lr" not in flags


def test_an_output_kd_point_of_a_dense_head_lm_student_parses_and_keeps_older_names():
    """The --kd-alpha axis adds output distillation to any row (here the WikiText-2 dense-head
    student, whose row has none); a point without the axis keeps its earlier name and flags."""
    recipe = load_recipe("language_model")
    args = SimpleNamespace(use_gpu=False, fp16=True, max_tokens=None, student_updates=None)
    profile = recipe.with_overrides(recipe.PROFILES["wikitext2-cpu"], args)
    row = recipe.student_flags("distilled_8x_head1000", profile, args, Path("teacher.pt"))
    assert "--kd-alpha" not in row

    flags = point_flags(row, 1e-3, "cosine", 50, 900, 0.0, 0, kd_alpha=0.5, kd_temperature=2.0)
    cfg = parsed(flags)
    assert (cfg.kd_alpha, cfg.kd_temperature, cfg.max_update, cfg.embedding_dense_rows) == (
        0.5, 2.0, 900, 1000)
    assert point_flags(row, 1e-3, "cosine", 50, 900, 0.0, 0) == point_flags(
        row, 1e-3, "cosine", 50, 900, 0.0, 0, kd_alpha=None)
    assert "--kd-alpha" not in point_flags(row, 1e-3, "cosine", 50, 900, 0.0, 0)
    assert point_name("distilled_8x_head1000", 1e-3, "cosine", 50, 900, 0.0, 0, "gold") == (
        "distilled_8x_head1000_lr0.001_cosine_w50_u900_b0_ef0_gold")
    assert point_name("distilled_8x_head1000", 1e-3, "cosine", 50, 900, 0.0, 0, "gold", 0.5) == (
        "distilled_8x_head1000_lr0.001_cosine_w50_u900_b0_ef0_gold_kd0.5_T2")
    assert point_name("distilled_8x_head1000", 1e-3, "cosine", 50, 900, 0.0, 0, "gold", 0.5,
                      4.0).endswith("_kd0.5_T4")
