"""Every command the two recipes print and run carries each flag once: the fairseq-train command
of the teacher and of every row, for every profile, device and budget override, and each row's
decoding, export and sequence-KD commands. Built as ``test_multi30k_budgets.py`` builds them,
without training: a stage's command is caught at ``run`` before anything runs. Which value wins
when groups overlap is argparse's (the later one), checked here on the flags that overlap."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.common import load_recipe
from examples.multi30k.commands import merge_flags

TRANSLATION_VOCAB, LM_VOCAB = 8008, 4008  # the recipes' joined / English dictionaries
WIKITEXT2_VOCAB = 33280
DEVICES = [(False, True), (True, True), (True, False)]  # --cpu, --fp16, GPU in fp32


def recipe_args(use_gpu=False, fp16=True, student_updates=None):
    return SimpleNamespace(use_gpu=use_gpu, fp16=fp16, max_tokens=None,
                           student_updates=student_updates, source_lang="de", target_lang="en")


def repeated(command):
    """The ``--flag`` tokens that occur more than once in ``command``."""
    counts = Counter(token for token in command if token.startswith("--"))
    return sorted(flag for flag, count in counts.items() if count > 1)


def value(command, flag):
    return command[command.index(flag) + 1]


def translation_commands(recipe, profile_name, args):
    """``{stage: fairseq-train command}`` of the teacher and of every row the recipe accepts."""
    profile = recipe.with_overrides(recipe.PROFILES[profile_name], args)
    flags = {"teacher": recipe.teacher_flags(profile, args)}
    for row in recipe.ALL_ROWS:
        flags[row] = recipe.row_flags(row, profile, args, TRANSLATION_VOCAB, "teacher.pt")
    return {name: recipe.train_command(Path("data-bin"), Path("rows") / name, row_flags)
            for name, row_flags in flags.items()}


def language_model_commands(lm, profile_name, args):
    """``{stage: fairseq-train command}`` of the teacher and of every row that trains (the
    post-training rows run export and eval-lm only; the adaptive and dense-head rows on WikiText-2
    only: a 4k sentencepiece vocabulary has no adaptive input as small as the 16x student, and a
    1,000-word dense head fills its 8x budget)."""
    profile = lm.with_overrides(lm.PROFILES[profile_name], args)
    vocab = WIKITEXT2_VOCAB if profile.corpus == "wikitext2" else LM_VOCAB
    flags = {"teacher": lm.teacher_flags(profile, args)}
    for row in lm.ALL_ROWS:
        word_level = row in lm.DENSE_HEAD_ROWS or (row in lm.ROWS
                                                   and lm.ROWS[row].kind == "adaptive")
        if row not in lm.POST_TRAINING_ROWS and (profile.corpus == "wikitext2" or not word_level):
            flags[row] = lm.row_flags(row, profile, args, vocab, "teacher.pt")
    return {name: lm.recipe.train_command(Path("data-bin"), Path("rows") / name, row_flags)
            for name, row_flags in flags.items()}


@pytest.mark.parametrize("student_updates", [None, 700])
@pytest.mark.parametrize("use_gpu, fp16", DEVICES)
@pytest.mark.parametrize("profile_name", ["ci", "demo", "cpu", "full"])
def test_every_translation_training_command_carries_each_flag_once(profile_name, use_gpu, fp16,
                                                                   student_updates):
    commands = translation_commands(load_recipe(), profile_name,
                                    recipe_args(use_gpu, fp16, student_updates))
    assert len(commands) == 40  # the teacher and the 39 rows
    assert {name: repeated(command) for name, command in commands.items()
            if repeated(command)} == {}


@pytest.mark.parametrize("student_updates", [None, 700])
@pytest.mark.parametrize("use_gpu, fp16", DEVICES)
@pytest.mark.parametrize("profile_name", ["ci", "demo", "full", "wikitext2-ci", "wikitext2-cpu",
                                          "wikitext2-full"])
def test_every_language_model_training_command_carries_each_flag_once(profile_name, use_gpu,
                                                                      fp16, student_updates):
    commands = language_model_commands(load_recipe("language_model"), profile_name,
                                       recipe_args(use_gpu, fp16, student_updates))
    # the teacher and the rows that train (the two adaptive and six dense-head ones on WikiText-2)
    assert len(commands) == (18 if profile_name.startswith("wikitext2") else 10)
    assert {name: repeated(command) for name, command in commands.items()
            if repeated(command)} == {}


@pytest.mark.parametrize("row, description", [
    ("tensor_train_8x",
     "tensor-train embedding (tensorly-torch), same budget, from the teacher's TT-SVD"),
    ("distilled_8x", "Distilled Embedding 8x (reconstruction init, fine-tuned with β=0)"),
    ("distilled_32x", "Distilled Embedding 32x (reconstruction init, fine-tuned with β=0)")])
def test_a_language_model_row_says_it_trains_without_embedding_kd(row, description):
    """The LM students train with β = 0, so the rows whose descriptions the translation recipe
    shares (its rows have embedding KD: "full method", "+ embedding KD") must not claim it."""
    lm = load_recipe("language_model")
    command = language_model_commands(lm, "wikitext2-cpu", recipe_args())[row]
    beta = command.index("--embedding-distill-weight")
    assert command[beta + 1] == "0"
    assert lm.ROWS[row].description == description


def test_the_later_group_keeps_its_value_as_argparse_kept_it():
    """The flags the groups used to repeat hold the value argparse ended up with before."""
    demo = translation_commands(load_recipe(), "demo", recipe_args())
    for row in ("distilled_8x", "svd_linear_8x", "teacher_continued"):
        # the profile's schedule replaces the common inverse-sqrt
        assert [value(demo[row], flag) for flag in (
            "--lr", "--lr-scheduler", "--warmup-updates", "--min-lr", "--max-update")] == [
            "0.003", "cosine", "50", "3e-05", "400"]
    assert [value(demo["teacher"], flag) for flag in (
        "--lr", "--lr-scheduler", "--warmup-updates", "--max-epoch", "--patience")] == [
        "2e-3", "inverse_sqrt", "200", "200", "5"]
    # the teacher's early stopping is its own: a student or the continued teacher runs its budget
    assert [row for row in ("distilled_8x", "svd_linear_8x", "teacher_continued")
            if "--patience" in demo[row] or "--max-epoch" in demo[row]] == []
    assert value(demo["teacher_continued"], "--finetune-from-model") == "teacher.pt"
    lm = language_model_commands(load_recipe("language_model"), "demo", recipe_args())
    assert value(lm["distilled_8x"], "--embedding-distill-weight") == "0"  # the LM students' β
    assert value(lm["svd_linear_8x"], "--embedding-init") == "svd"
    assert [value(lm["teacher_continued"], flag) for flag in ("--lr", "--lr-scheduler",
                                                              "--max-update")] == [
        "0.003", "cosine", "300"]
    wikitext = language_model_commands(load_recipe("language_model"), "wikitext2-cpu",
                                       recipe_args())
    assert [value(wikitext["teacher"], flag) for flag in ("--max-epoch", "--patience")] == [
        "40", "3"]
    assert [flag for flag in ("--max-epoch", "--patience")
            if flag in wikitext["teacher_continued"]] == []
    # the students' budget, chosen on valid (300 / 900 updates), and the continued teacher's
    assert [value(wikitext[row], "--max-update") for row in (
        "distilled_8x_head1000", "distilled_16x", "teacher_continued")] == ["900"] * 3


def test_merge_flags_keeps_each_flag_once_with_the_later_value_at_its_later_place():
    assert merge_flags(["--a", "1", "--b", "--c", "x"], ["--a", "2", "--d"], ("--c", "y")) == [
        "--b", "--a", "2", "--d", "--c", "y"]
    assert merge_flags(["--lr", "-1", "--betas", "(0.9, 0.98)"]) == [
        "--lr", "-1", "--betas", "(0.9, 0.98)"]
    with pytest.raises(ValueError) as refused:
        merge_flags(["data-bin", "--a", "1"])
    assert str(refused.value) == "'data-bin' is not an option: merge_flags takes --flag groups only"


class Ran(Exception):
    """Raised in place of running a command: the command is all the test needs."""


def first_command(monkeypatch, module, stage, *args):
    """The command line ``stage`` (a function of ``module``) runs first, caught before it runs."""
    commands = []

    def caught(command, log_path, stdin=None):
        commands.append(command)
        raise Ran

    monkeypatch.setattr(module, "run", caught)
    with pytest.raises(Ran):
        stage(*args)
    return commands[0]


@pytest.mark.parametrize("use_gpu, fp16", DEVICES)
def test_decoding_export_and_sequence_kd_commands_carry_each_flag_once(monkeypatch, tmp_path,
                                                                      use_gpu, fp16):
    from examples.multi30k import sequence_kd, stages

    recipe, lm = load_recipe(), load_recipe("language_model")
    args = recipe_args(use_gpu, fp16)
    (tmp_path / "data").mkdir()
    for name in ("test.raw.en", "train.spm.de"):
        (tmp_path / "data" / name).write_text("a line\n")
    checkpoint, out = tmp_path / "checkpoint_best.pt", tmp_path / "row"
    commands = {}
    for name in recipe.PROFILES:
        profile = recipe.PROFILES[name]
        commands[f"{name} generate"] = first_command(
            monkeypatch, stages, stages.evaluate, tmp_path / "data-bin", checkpoint, out,
            tmp_path, args, profile, "row")
        commands[f"{name} sequence-KD generate"] = first_command(
            monkeypatch, sequence_kd, sequence_kd.distill_training_data, args, profile, tmp_path,
            tmp_path / "data-bin", checkpoint)
    for name in lm.PROFILES:
        commands[f"{name} eval-lm"] = first_command(
            monkeypatch, lm, lm.evaluate, tmp_path / "data-bin", checkpoint, out, tmp_path, args,
            lm.PROFILES[name], "row")
    commands["export"] = first_command(monkeypatch, stages, stages.export_size, checkpoint, out,
                                       tmp_path, "row")
    assert len(commands) == 15
    assert {name: repeated(command) for name, command in commands.items()
            if repeated(command)} == {}


def test_only_rows_that_start_from_the_teacher_run_its_stage():
    lm = load_recipe("language_model")
    assert not lm.needs_teacher(["adaptive_8x", "adaptive_16x", "smaller_dim",
                                 "adaptive_16x_ptq_int4"])  # codes of a from-scratch row
    for row in ["distilled_8x", "svd_linear_8x", "teacher_continued", "teacher_int4",
                "distilled_8x_ptq_int8"]:
        assert lm.needs_teacher(["adaptive_8x", "smaller_dim", row]), row
