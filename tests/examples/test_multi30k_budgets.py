"""The fine-tuning budget each row trains with, read back through fairseq's own parser from the
commands the recipe builds: the cpu profile gives 16x rows (every method) the 1,000 updates valid
chose for them and the other rows 500; ``--student-updates`` sets every row's."""

import hashlib
import json
from types import SimpleNamespace

import pytest

from benchmarks.common import load_recipe


def parsed(flags):
    """fairseq's own training parser over a recipe command's flags (argparse: the last value;
    nothing is read: the task loads the teacher only when it is set up)."""
    from fairseq import options

    return options.parse_args_and_arch(options.get_training_parser(),
                                       input_args=["unused-data", *flags])


def recipe_args(student_updates=None):
    return SimpleNamespace(use_gpu=False, fp16=False, max_tokens=None,
                           student_updates=student_updates)


@pytest.mark.parametrize("row, updates", [
    ("distilled_16x", 1000), ("svd_linear_16x", 1000), ("tensor_train_16x", 1000),
    ("distilled_32x", 1000), ("distilled_8x", 500), ("distilled_4x", 500), ("svd_linear_8x", 500),
])
def test_cpu_profile_gives_each_compression_its_budget(row, updates):
    recipe = load_recipe()
    profile = recipe.with_overrides(recipe.PROFILES["cpu"], recipe_args())
    args = parsed(recipe.student_flags(row, profile, recipe_args(), "unused.pt"))
    assert args.max_update == updates
    # one cosine half-period over the row's whole budget (fairseq: max_update − warm-up)
    assert (args.lr_scheduler, args.lr, args.min_lr, args.warmup_updates) == (
        "cosine", [1.5e-3], 1.5e-5, 50)


def test_teacher_continued_keeps_the_profiles_default_budget():
    recipe = load_recipe()
    profile = recipe.PROFILES["cpu"]
    flags = recipe.teacher_flags(profile, recipe_args()) + profile.fine_tuning(
        recipe.ROWS["teacher_continued"].compression)
    assert parsed(flags).max_update == 500
    assert profile.budget_note() == (
        "Student rows: 500 fine-tuning updates; rows at 16x or more: 1,000.")


def test_student_updates_sets_every_rows_budget():
    recipe = load_recipe()
    profile = recipe.with_overrides(recipe.PROFILES["cpu"], recipe_args(student_updates=700))
    for row in ("distilled_8x", "distilled_16x", "svd_linear_16x"):
        assert parsed(recipe.student_flags(row, profile, recipe_args(), "t.pt")).max_update == 700
    assert profile.budget_note() == "Student rows: 700 fine-tuning updates."
    # the profile itself is left as declared
    assert recipe.PROFILES["cpu"].updates_from_compression == {16: 1000}


def test_profiles_without_own_budgets_give_every_row_the_same():
    recipe = load_recipe()
    full = recipe.PROFILES["full"]
    assert {parsed(recipe.student_flags(row, full, recipe_args(), "t.pt")).max_update
            for row in ("distilled_4x", "distilled_16x", "distilled_32x")} == {2000}
    assert full.budget_note() == "Student rows: 2,000 fine-tuning updates."


def test_a_finished_stage_is_reused_only_with_its_settings(tmp_path):
    """A changed budget is refused with one error line naming the directory and the change, and
    the finished stage is left as it was; a run that differs only in where it runs reuses it."""
    recipe = load_recipe()
    from examples.multi30k.commands import refuse_other_settings, training_settings

    flags = ["--user-dir", "/a/plugin", "--lr", "1e-3", "--max-update", "500",
             "--share-all-embeddings", "--teacher-path", "/a/teacher.pt", "--cpu"]
    done = tmp_path / "rows" / "distilled_16x" / "train.json"
    done.parent.mkdir(parents=True)
    payload = json.dumps({"updates": 500, "settings": training_settings(flags)})
    done.write_text(payload)
    assert training_settings(flags) == {"--lr": "1e-3", "--max-update": "500",
                                        "--share-all-embeddings": ""}
    moved = ["--user-dir", "/b/plugin", "--lr", "1e-3", "--max-update", "500",
             "--share-all-embeddings", "--teacher-path", "/b/teacher.pt", "--fp16"]
    refuse_other_settings(done, training_settings(moved))  # reused: no error
    longer = flags + ["--max-update", "1000", "--min-lr", "1e-5"]
    with pytest.raises(SystemExit) as refused:
        recipe.train(tmp_path / "data-bin", done.parent, longer, "distilled_16x", tmp_path)
    assert str(refused.value) == (
        f"error: {done.parent} was trained with other settings (--max-update 500 → 1000, "
        "--min-lr (unset) → 1e-5); move it away to train it again, or pass another --results")
    assert done.read_text() == payload and sorted(done.parent.iterdir()) == [done]
    assert not (tmp_path / "logs").exists()  # no command ran


def test_a_stage_finished_before_settings_were_recorded_is_checked_by_its_updates(tmp_path):
    from examples.multi30k.commands import refuse_other_settings

    done = tmp_path / "train.json"
    done.write_text(json.dumps({"updates": 500, "train_seconds": 757.0}))
    refuse_other_settings(done, {"--lr": "1.5e-3", "--max-update": "500"})  # the same budget
    refuse_other_settings(done, {"--max-epoch": "12"})  # a teacher: nothing to compare
    with pytest.raises(SystemExit) as refused:
        refuse_other_settings(done, {"--lr": "1.5e-3", "--max-update": "1000"})
    assert str(refused.value) == (
        f"error: {tmp_path} was trained with other settings (--max-update 500 → 1000); move it "
        "away to train it again, or pass another --results")


def test_a_finished_student_is_not_reused_for_another_teacher(tmp_path):
    """The teacher's bytes are part of a student's settings (its path is not): the same teacher
    moved elsewhere reuses the row, another teacher at the same path is refused with both
    digests, and a row recorded before teachers were recorded is still reused."""
    recipe = load_recipe()
    from examples.multi30k.commands import starting_checkpoint, training_settings

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"the first teacher")
    flags = ["--lr", "1e-3", "--max-update", "500", "--teacher-path", str(teacher)]
    first = hashlib.sha256(b"the first teacher").hexdigest()[:16]
    assert starting_checkpoint(flags) == {"teacher sha256": first}
    done = tmp_path / "rows" / "distilled_8x" / "train.json"
    done.parent.mkdir(parents=True)
    payload = json.dumps({"updates": 500, "settings": {**training_settings(flags),
                                                       "teacher sha256": first}})
    done.write_text(payload)
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(teacher.read_bytes())
    assert recipe.train(tmp_path / "data-bin", done.parent, flags[:-1] + [str(moved)],
                        "distilled_8x", tmp_path)["updates"] == 500
    teacher.write_bytes(b"a teacher trained again")
    second = hashlib.sha256(b"a teacher trained again").hexdigest()[:16]
    with pytest.raises(SystemExit) as refused:
        recipe.train(tmp_path / "data-bin", done.parent, flags, "distilled_8x", tmp_path)
    assert str(refused.value) == (
        f"error: {done.parent} was trained with other settings (teacher sha256 {first} → "
        f"{second}); move it away to train it again, or pass another --results")
    assert done.read_text() == payload and not (tmp_path / "logs").exists()
    teacher.unlink()  # deleted to save disk: nothing to compare the row by, so it is reused
    assert recipe.train(tmp_path / "data-bin", done.parent, flags, "distilled_8x",
                        tmp_path)["updates"] == 500
    done.write_text(json.dumps({"updates": 500, "settings": training_settings(flags)}))
    assert recipe.train(tmp_path / "data-bin", done.parent, flags, "distilled_8x",
                        tmp_path)["updates"] == 500  # recorded before teachers were
