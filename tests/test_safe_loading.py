"""A user's checkpoint is untrusted: real teachers load, hostile files are refused everywhere.

Fixtures are real files: a stock teacher trained through the CLI with ``--eval-bleu`` (its BLEU
count meters are numpy arrays in ``extra_state["metrics"]``), the same checkpoint re-pickled with
numpy 2's module spelling (``numpy._core``), and a pickle whose unpickling runs ``os.system``. Each
hostile case is run with and without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (a workaround people
paste for fairseq on new torch) and must leave no marker file behind.
"""

import os
import subprocess
import sys
import zipfile

import pytest
import torch

from helpers import PLUGIN_DIR, combined_output, dense_transformer_tiny_train_args, fairseq_env
from helpers import run_fairseq, student_train_args

FORCE_UNSAFE = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


@pytest.fixture(scope="module")
def eval_bleu_teacher(data_bin, tmp_path_factory):
    """A stock transformer_tiny trained with fairseq's standard ``--eval-bleu`` validation."""
    save_dir = tmp_path_factory.mktemp("eval-bleu-teacher")
    run_fairseq("train", *dense_transformer_tiny_train_args(data_bin, save_dir, max_update=30),
                # min_len: even a 30-update model emits words, so fairseq logs its BLEU counts
                # (as numpy arrays, only when some were counted)
                "--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_b": 8, "min_len": 4}',
                "--eval-bleu-remove-bpe", "sentencepiece")
    return save_dir / "checkpoint_best.pt"


def respelled(checkpoint, destination, old=b"numpy.core.multiarray", new=b"numpy._core.multiarray"):
    """The same checkpoint with its pickle's numpy module names rewritten (protocol 2 names
    globals as newline-terminated text, so the rename is a byte replacement)."""
    with zipfile.ZipFile(checkpoint) as source, zipfile.ZipFile(destination, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert old in data, "the fixture holds no numpy array: the test would prove nothing"
                data = data.replace(old, new)
            target.writestr(item, data)
    return destination


class RunsCode:
    """Unpickling this calls os.system (what a hostile 'checkpoint' does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def hostile(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "hostile.pt"
    torch.save({"model": {"x": RunsCode(marker)}, "cfg": {"model": {}}, "args": None}, path)
    return path, marker


def test_eval_bleu_teacher_holds_numpy_arrays_and_loads_as_teacher(
    data_bin, eval_bleu_teacher, tmp_path
):
    assert b"numpy.core.multiarray" in zipfile.ZipFile(eval_bleu_teacher).read(
        next(n for n in zipfile.ZipFile(eval_bleu_teacher).namelist() if n.endswith("data.pkl")))
    result = run_fairseq("train", *student_train_args(data_bin, eval_bleu_teacher, tmp_path, 1))
    assert "loaded frozen teacher" in combined_output(result)


def test_a_numpy_2_checkpoint_loads_under_numpy_1(data_bin, eval_bleu_teacher, tmp_path):
    teacher = respelled(eval_bleu_teacher, tmp_path / "numpy2-teacher.pt")
    result = run_fairseq("train", *student_train_args(data_bin, teacher, tmp_path / "student", 1))
    assert "loaded frozen teacher" in combined_output(result)
    generated = run_fairseq("generate", data_bin, "--user-dir", PLUGIN_DIR, "--path", teacher,
                            "--gen-subset", "test", "--beam", "1", "--batch-size", "50",
                            "--required-batch-size-multiple", "1", "--max-len-b", "5", "--cpu")
    assert "Translated" in combined_output(generated)


REFUSAL = ("is not a readable fairseq checkpoint: it needs posix.system, which safe loading "
           "(weights_only) refuses; do not turn safe loading off for a file you did not make: "
           "pass a checkpoint written by fairseq-train")


# Without the variable, the teacher, stats and export cases are a row of docs/bad-input.md's table
# (tests/test_bad_input_table.py); here with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.
def test_code_running_teacher_is_refused_and_never_runs_whatever_the_env(data_bin, hostile, tmp_path):
    path, marker = hostile
    result = run_fairseq("train", *student_train_args(data_bin, path, tmp_path / "student", 1),
                         check=False, env=FORCE_UNSAFE)
    assert result.returncode != 0 and "Traceback" not in combined_output(result)
    assert not marker.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"fairseq-train: error: --teacher-path {path} {REFUSAL}")
    assert not (tmp_path / "student" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("command", ["stats", "export"])
def test_code_running_file_is_refused_by_stats_and_export_whatever_the_env(hostile, tmp_path, command):
    path, marker = hostile
    extra = [tmp_path / "out.pt"] if command == "export" else []
    result = subprocess.run([sys.executable, "-m", "fairseq_distilled_emb", command, path, *extra],
                            capture_output=True, text=True, env=fairseq_env(FORCE_UNSAFE))
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"fairseq-distilled-emb {command}: error: {path} {REFUSAL}")
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("environment", [{}, FORCE_UNSAFE], ids=["default", "force-unsafe-env"])
def test_code_running_file_never_runs_in_fairseq_generate(data_bin, hostile, environment):
    path, marker = hostile
    result = run_fairseq("generate", data_bin, "--user-dir", PLUGIN_DIR, "--path", path,
                         "--gen-subset", "test", "--cpu", check=False,
                         env=environment)
    assert result.returncode != 0 and not marker.exists()
    assert "Traceback" not in combined_output(result)
    assert result.stderr.strip().splitlines()[-1] == f"fairseq-generate: error: a checkpoint {REFUSAL}"
    if environment:
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD ignored" in combined_output(result)


def test_checkpoint_loader_refuses_before_any_code_runs(hostile):
    from fairseq_distilled_emb.checkpoints import load_checkpoint
    from fairseq_distilled_emb.errors import DistilledEmbeddingError

    path, marker = hostile
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with pytest.raises(DistilledEmbeddingError) as refused:
            load_checkpoint(path)
    finally:
        del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
    assert str(refused.value) == f"{path} {REFUSAL}" and not marker.exists()
