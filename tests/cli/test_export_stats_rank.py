"""fairseq-distilled-emb export / stats / rank on real checkpoints, through the console script's
entry point: in-process (``helpers.run_distilled_emb``, no 5 s interpreter start per call) except
where the process is under test (the console script itself, the umask)."""

import re
import subprocess
import sys

import pytest
import torch

from helpers import (PLUGIN_DIR, console_script, hypotheses, run_distilled_emb, run_fairseq,
                     target_log_probs)


def cli(*args, check=True):
    """``fairseq-distilled-emb args``, in-process (the console script's ``main``)."""
    result = run_distilled_emb(*args)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


def generate(data_bin, checkpoint, plugin=True):
    flags = ["--user-dir", PLUGIN_DIR] if plugin else []
    result = run_fairseq(
        "generate", data_bin, *flags, "--path", checkpoint, "--gen-subset", "test", "--beam", "4",
        "--batch-size", "50", "--required-batch-size-multiple", "1", "--max-len-b", "20", "--cpu",
    )
    return hypotheses(result.stdout)


@pytest.fixture(scope="module")
def exported(tiny_distilled_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    paths = {"compact": out / "compact.pt", "fp16": out / "fp16.pt", "dense": out / "dense.pt"}
    cli("export", tiny_distilled_student.best, paths["compact"])
    cli("export", tiny_distilled_student.best, paths["fp16"], "--fp16")
    cli("export", tiny_distilled_student.best, paths["dense"], "--dense")
    return paths


def test_export_is_smaller_and_has_no_training_state(tiny_distilled_student, exported):
    original = tiny_distilled_student.best.stat().st_size
    state = torch.load(exported["compact"])  # plain torch.load: default weights_only=True
    assert state["last_optimizer_state"] is None
    assert state["cfg"]["task"]["_name"] == "translation"
    assert "teacher_path" not in state["cfg"]["task"]
    assert exported["compact"].stat().st_size < 0.5 * original
    assert exported["fp16"].stat().st_size < 0.6 * exported["compact"].stat().st_size
    fp16 = torch.load(exported["fp16"])["model"]
    # the body is halved; the factors stay fp32 (f(U)W cancels: fp16 factors change the model)
    assert fp16["encoder.layers.0.fc1.weight"].dtype == torch.float16
    assert fp16["encoder.embed_tokens.U"].dtype == torch.float32
    assert fp16["decoder.output_projection.embedding.W"].dtype == torch.float32


def test_export_report_lists_parameters_and_bytes(tiny_distilled_student, tmp_path):
    """The installed console script, end to end in its own process (the other tests call its
    ``main`` in-process)."""
    result = subprocess.run([console_script("distilled-emb"), "export",
                             tiny_distilled_student.best, tmp_path / "x.pt"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters:" in result.stdout and "bytes:" in result.stdout
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_exported_checkpoints_generate_what_the_training_checkpoint_does(
    data_bin, tiny_distilled_student, exported
):
    reference = generate(data_bin, tiny_distilled_student.best)
    assert len(reference) == 200
    assert generate(data_bin, exported["compact"]) == reference


def test_fp16_export_scores_as_the_fp32_checkpoint(tiny_distilled_student, exported):
    """Teacher-forced log-probabilities of the reference tokens on a real valid batch: the fp16
    body moves them by fp16 rounding only (measured 0.0018 at most), fp16 factors would not
    (0.095: f(U)·W cancels). Beam hypotheses of a 20-update model sit on near-ties, so which
    of them flip depends on the CPU's arithmetic (at least 198/200 where this test was first
    written, 195 on an AVX2-only machine)."""
    def reference_log_probs(path):
        scores, target, dictionary = target_log_probs(path, max_sentences=64)
        return scores[target != dictionary.pad()]

    fp32 = reference_log_probs(tiny_distilled_student.best)
    fp16 = reference_log_probs(exported["fp16"])
    assert fp16.numel() == fp32.numel() > 500
    assert torch.allclose(fp16, fp32, rtol=0, atol=1e-2)


def test_dense_export_loads_in_plain_fairseq_and_generates_the_same(
    data_bin, tiny_distilled_student, exported
):
    state = torch.load(exported["dense"])
    assert state["cfg"]["model"]["arch"] == "transformer_tiny"
    assert not any(key.endswith((".U", ".W")) for key in state["model"])
    assert state["model"]["encoder.embed_tokens.weight"].shape[1] == 64
    reference = generate(data_bin, tiny_distilled_student.best)
    assert generate(data_bin, exported["dense"], plugin=False) == reference


def test_export_never_overwrites_without_force(tiny_distilled_student, tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"user data")
    result = cli("export", tiny_distilled_student.best, target, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"fairseq-distilled-emb export: error: {target} exists: choose another output or pass "
        "--force"
    )
    assert target.read_bytes() == b"user data"
    cli("export", tiny_distilled_student.best, target, "--force")
    assert torch.load(target)["model"]


def test_stats_of_a_factorized_and_a_dense_checkpoint(tiny_distilled_student, tiny_teacher):
    factorized = cli("stats", tiny_distilled_student.best).stdout
    rank = int(next(line.split("rank=")[-1] for line in factorized.splitlines()
                    if line.startswith("compressed")))
    vocab = torch.load(tiny_teacher.best, weights_only=False)["model"][
        "encoder.embed_tokens.weight"].shape[0]
    assert rank == (vocab * 64) // (4 * (vocab + 64))
    assert f"{rank * (vocab + 64):,}" in factorized
    dense = cli("stats", tiny_teacher.best).stdout
    assert "dense" in dense and f"{vocab * 64:,}" in dense


def test_rank_subcommand():
    result = cli("rank", "--vocab", "8000", "--dim", "512", "--compression", "8")
    assert result.stdout.startswith("rank 60:")
    bad = cli("rank", "--vocab", "10", "--dim", "4", "--compression", "100", check=False)
    assert bad.returncode == 2 and "leaves no rank" in bad.stderr


def test_export_file_mode_follows_the_umask_and_stale_temporaries_are_removed(
    tiny_distilled_student, tmp_path
):
    stale = tmp_path / ".model.pt.abc123.tmp"  # what an export killed mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    target = tmp_path / "model.pt"
    result = subprocess.run(
        ["sh", "-c", f"umask 027 && {sys.executable} -m fairseq_distilled_emb export "
         f"{tiny_distilled_student.best} {target}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (target.stat().st_mode & 0o777) == 0o640
    assert not stale.exists() and f"removed {stale}, left by an interrupted export" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_export_over_its_own_input_reports_the_size_it_had(tiny_distilled_student, tmp_path):
    copy = tmp_path / "checkpoint.pt"
    copy.write_bytes(tiny_distilled_student.best.read_bytes())
    before = copy.stat().st_size
    result = cli("export", copy, copy, "--force")
    after = copy.stat().st_size
    assert f"bytes:      {before:,} -> {after:,} ({after / before:.1%})" in result.stdout
    assert after < before


def test_an_export_restarts_training_through_stock_finetune_from_model(
    data_bin, tiny_distilled_student, exported, tmp_path
):
    result = run_fairseq(
        "train", data_bin, "--user-dir", PLUGIN_DIR, "--arch", "distilled_transformer_tiny",
        "--share-all-embeddings", "--embedding-compression", "4", "--task", "translation",
        "--criterion", "label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-4",
        "--max-tokens", "2000", "--max-update", "2", "--cpu", "--num-workers", "0",
        "--finetune-from-model", exported["fp16"], "--save-dir", tmp_path, "--log-format", "simple",
    )
    log = result.stdout + result.stderr
    assert f"loading pretrained model from {exported['fp16']}" in log
    assert re.search(r"\| train \| epoch 001 .*\| num_updates 2 ", log)


def test_a_checkpoint_written_from_a_gpu_is_read_with_its_embedding_tied(tiny_teacher, tmp_path):
    """fairseq copies a GPU model's state to the host tensor by tensor before saving, so a
    shared embedding lands in the file once per module using it (an H100-trained teacher's fp16
    export was 23.4 MB instead of 15.2). stats and export read such a file as the tied model."""
    state = torch.load(tiny_teacher.best, weights_only=False)
    state["model"] = {key: value.clone() for key, value in state["model"].items()}
    untied = tmp_path / "untied.pt"
    torch.save(state, untied)
    keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "decoder.output_projection.weight"]
    # the file really holds three copies of the V×d matrix, and the original one
    saved = torch.load(untied, weights_only=False)["model"]
    assert len({saved[key].untyped_storage().data_ptr() for key in keys}) == 3
    original = torch.load(tiny_teacher.best, weights_only=False)["model"]
    assert len({original[key].untyped_storage().data_ptr() for key in keys}) == 1
    tied_stats = cli("stats", tiny_teacher.best).stdout.splitlines()
    untied_stats = cli("stats", untied).stdout.splitlines()
    parameter_lines = [line for line in tied_stats if "params" in line]
    assert len(parameter_lines) == 3  # embedding, other, total
    assert [line for line in untied_stats if "params" in line] == parameter_lines
    cli("export", tiny_teacher.best, tmp_path / "tied_fp16.pt", "--fp16")
    cli("export", untied, tmp_path / "untied_fp16.pt", "--fp16")
    model = torch.load(tmp_path / "untied_fp16.pt")["model"]
    reference = torch.load(tmp_path / "tied_fp16.pt")["model"]
    assert stored_bytes(model) == stored_bytes(reference)  # the export holds one copy, as tied
    assert len({model[key].untyped_storage().data_ptr() for key in keys}) == 1
    # vectors that happen to be equal (LayerNorm weights never moved from 1) stay separate
    norms = [key for key in model if key.endswith("layer_norm.weight")]
    assert len({model[key].untyped_storage().data_ptr() for key in norms}) == len(norms)


def stored_bytes(model: dict) -> int:
    """Bytes of the distinct storages behind a state dict (tied keys share one)."""
    storages = {value.untyped_storage().data_ptr(): value.untyped_storage().nbytes()
                for value in model.values()}
    return sum(storages.values())
