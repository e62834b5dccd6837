"""translation_reconstruction_init: teacher validation, reconstruction init, weight copy, resume."""

import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import FactorizedEmbedding
from helpers import (
    PLUGIN_DIR,
    build_student_from_teacher,
    combined_output,
    dictionary_size,
    first_batch,
    parse_log_stats,
    run_fairseq,
    student_train_args,
)

ERROR_LINE = re.compile(
    r"relative Frobenius error ([\d.]+) \| rank-(\d+) SVD ([\d.]+) \| rank-(\d+) SVD ([\d.]+)"
)


def teacher_state(teacher):
    return torch.load(teacher.best, weights_only=False)


# ----------------------------------------------------------------------------- reconstruction


def test_reconstruction_beats_the_rank_r_minus_1_svd_on_a_trained_embedding(tiny_teacher):
    embedding = teacher_state(tiny_teacher)["model"]["encoder.embed_tokens.weight"].float()
    embedding = embedding[4:]  # the specials' rows of a fresh dictionary barely train
    rank = 15
    result = factorization.fit_reconstruction(embedding, rank, max_steps=400)
    below = factorization.svd_relative_error(embedding, rank - 1)
    best = factorization.svd_relative_error(embedding, rank)
    achieved = factorization.relative_error(embedding, torch.relu(result.U) @ result.W)
    assert achieved == pytest.approx(result.relative_error, abs=1e-4)
    assert achieved <= below + 1e-6, (achieved, below)
    assert achieved >= best - 1e-4, "nothing beats the rank-r truncated SVD (Eckart–Young)"


def test_train_log_reports_reconstruction_against_both_svd_errors(data_bin, tiny_teacher, tmp_path):
    result = run_fairseq("train", *student_train_args(data_bin, tiny_teacher.best, tmp_path, 2))
    log = combined_output(result)
    match = ERROR_LINE.search(log)
    assert match, log[-2000:]
    error, rank, svd_r, rank_below, svd_below = match.groups()
    assert int(rank) == int(rank_below) + 1
    assert float(svd_r) - 1e-4 <= float(error) <= float(svd_below) + 1e-4
    assert "reconstruction step" in log
    assert re.search(r"copied \d+ non-embedding parameter tensors from the teacher", log)
    # the same figures, for scripts, beside the checkpoints
    figures = json.loads((tmp_path / "reconstruction.json").read_text())
    vocab = dictionary_size(data_bin)
    assert list(figures["embeddings"]) == ["encoder.embed_tokens"]  # shared: one factorization
    start = figures["embeddings"]["encoder.embed_tokens"]
    assert start["kind"] == "low-rank" and start["size"] == f"rank={rank}"
    assert start["params"] == int(rank) * (vocab + 64) and start["method"] == "reconstruct"
    assert (f"{start['relative_error']:.4f}", f"{start['svd_error_rank_r']:.4f}",
            f"{start['svd_error_rank_r_minus_1']:.4f}") == (error, svd_r, svd_below)
    total = re.search(r"total model params ([\d,]+)", log).group(1)
    assert f"{figures['total_params']:,}" == total


# ----------------------------------------------------------------------------- weight copy


def swap_in_dense_embedding(student, teacher):
    student.encoder.embed_tokens = teacher.encoder.embed_tokens
    student.decoder.embed_tokens = teacher.decoder.embed_tokens
    student.decoder.output_projection = teacher.decoder.output_projection


def test_student_with_the_teachers_embedding_reproduces_the_teacher_exactly(
    data_bin, tiny_teacher, tmp_path
):
    _, task, student = build_student_from_teacher(data_bin, tiny_teacher.best, tmp_path)
    teacher = task.teacher
    batch = first_batch(task)
    swap_in_dense_embedding(student, teacher)
    student.eval()
    with torch.no_grad():
        expected = teacher(**batch["net_input"])[0]
        actual = student(**batch["net_input"])[0]
    assert torch.equal(actual, expected)


def mean_kl_to_teacher(task, student, batch):
    with torch.no_grad():
        teacher_lprobs = F.log_softmax(task.teacher(**batch["net_input"])[0], -1)
        student.eval()
        student_lprobs = F.log_softmax(student(**batch["net_input"])[0], -1)
    mask = batch["target"].ne(task.target_dictionary.pad())
    kl = F.kl_div(student_lprobs, teacher_lprobs, log_target=True, reduction="none").sum(-1)
    return kl[mask].mean().item()


def test_reconstructed_student_is_closer_to_the_teacher_than_a_random_init(
    data_bin, tiny_teacher, tmp_path
):
    kls = {}
    for init in ("reconstruct", "svd", "random"):
        activation = "linear" if init == "svd" else "relu"
        _, task, student = build_student_from_teacher(
            data_bin, tiny_teacher.best, tmp_path / init, "--embedding-init", init,
            "--embedding-activation", activation,
        )
        kls[init] = mean_kl_to_teacher(task, student, first_batch(task))
    assert kls["reconstruct"] < 0.8 * kls["random"], kls
    assert kls["svd"] < 0.8 * kls["random"], kls


def test_teacher_is_frozen_and_outside_the_student(data_bin, tiny_teacher, tmp_path):
    _, task, student = build_student_from_teacher(data_bin, tiny_teacher.best, tmp_path)
    teacher = task.teacher
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    student_params = {id(p) for p in student.parameters()}
    assert not any(id(p) in student_params for p in teacher.parameters())
    assert not any(m is teacher for m in student.modules())
    embeddings = {id(m) for m in student.modules() if isinstance(m, FactorizedEmbedding)}
    assert len(embeddings) == 1


def test_student_checkpoint_holds_no_teacher_and_loads_without_the_teacher_file(
    data_bin, tiny_teacher, tmp_path
):
    teacher_copy = tmp_path / "teacher.pt"
    shutil.copy(tiny_teacher.best, teacher_copy)
    save_dir = tmp_path / "student"
    run_fairseq("train", *student_train_args(data_bin, teacher_copy, save_dir, 3))
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)
    teacher_params = sum(v.numel() for v in teacher_state(tiny_teacher)["model"].values())
    assert not any("teacher" in key for key in state["model"])
    assert all(".U" in k or ".W" in k or "embed_tokens.weight" not in k for k in state["model"])
    optimizer_numel = sum(
        v["exp_avg"].numel() for v in state["last_optimizer_state"]["state"].values()
    )
    assert optimizer_numel < teacher_params  # the teacher is not in the optimizer
    teacher_copy.unlink()  # decoding must not need the teacher file
    result = run_fairseq(
        "generate", data_bin, "--user-dir", PLUGIN_DIR, "--path", save_dir / "checkpoint_last.pt",
        "--gen-subset", "test", "--beam", "2", "--batch-size", "50", "--cpu",
        "--required-batch-size-multiple", "1", "--max-len-b", "20",
    )
    assert result.stdout.count("\nH-") + result.stdout.startswith("H-") == 200


# ----------------------------------------------------------------------------- resume


def test_resume_skips_the_reconstruction_and_continues_from_the_last_update(
    data_bin, tiny_teacher, tmp_path
):
    first = run_fairseq(
        "train", *student_train_args(data_bin, tiny_teacher.best, tmp_path, 4,
                                     "--save-interval-updates", "4")
    )
    assert "reconstruction step" in combined_output(first)
    restored = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)["model"]
    second = run_fairseq(
        "train", *student_train_args(data_bin, tiny_teacher.best, tmp_path, 8,
                                     "--save-interval-updates", "4")
    )
    log = combined_output(second)
    assert "reconstruction step" not in log
    assert "skipping the reconstruction init" in log
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", log)
    updates = [int(row["num_updates"]) for row in parse_log_stats(log)]
    assert updates and updates[0] == 5 and updates[-1] == 8
    # the restored weights were trained on, not overwritten by a fresh reconstruction
    final = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)["model"]
    key = "encoder.embed_tokens.U"
    assert not torch.equal(final[key], restored[key])


def test_embedding_first_phase_trains_only_the_factors_then_everything(
    data_bin, tiny_teacher, tmp_path
):
    teacher = teacher_state(tiny_teacher)["model"]
    first = run_fairseq(
        "train", *student_train_args(data_bin, tiny_teacher.best, tmp_path, 3,
                                     "--embedding-first-updates", "3")
    )
    assert "update 0: training the compressed embedding only (body frozen)" in combined_output(first)
    frozen = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)["model"]
    def body_keys(state):
        return sorted(key for key, value in state.items() if value.is_floating_point()
                      and not key.endswith(".version")
                      and "embed_tokens" not in key and "output_projection" not in key)

    body = body_keys(frozen)
    assert body == body_keys(teacher) and len(body) > 20
    # three updates later the body is still the teacher's, bit for bit; the factors moved
    assert all(torch.equal(frozen[key], teacher[key]) for key in body)
    _, _, initial = build_student_from_teacher(data_bin, tiny_teacher.best, tmp_path / "fresh")
    assert not torch.equal(frozen["encoder.embed_tokens.U"], initial.encoder.embed_tokens.U)
    assert not torch.equal(frozen["encoder.embed_tokens.W"], initial.encoder.embed_tokens.W)

    second = run_fairseq(
        "train", *student_train_args(data_bin, tiny_teacher.best, tmp_path, 5,
                                     "--embedding-first-updates", "3")
    )
    assert "update 3: training every weight" in combined_output(second)
    final = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)["model"]
    changed = [key for key in body if not torch.equal(final[key], teacher[key])]
    assert changed == body


# ----------------------------------------------------------------------------- bad input


# Every row of the bad-input table (docs/bad-input.md) runs through fairseq-train in
# tests/test_bad_input_table.py; here, in-process, the mismatches the table shows by one example.
@pytest.mark.parametrize(
    "flags, sharing, compression, message",
    [
        (["--encoder-embed-dim", "32", "--decoder-embed-dim", "32"], ("--share-all-embeddings",),
         "4", r"encoder_embed_dim=64 but the student has --encoder-embed-dim 32"),
        (["--encoder-attention-heads", "4"], ("--share-all-embeddings",), "4",
         r"encoder_attention_heads=2 but the student has --encoder-attention-heads 4"),
        (["--activation-fn", "gelu"], ("--share-all-embeddings",), "4",
         r"activation_fn=relu but the student has --activation-fn gelu"),
        (["--no-scale-embedding"], ("--share-all-embeddings",), "4",
         r"no_scale_embedding=False but the student has --no-scale-embedding True"),
        (["--layernorm-embedding"], ("--share-all-embeddings",), "4",
         r"layernorm_embedding=False but the student has --layernorm-embedding True"),
    ],
)
def test_student_incompatible_with_the_teacher_is_rejected(
    data_bin, tiny_teacher, tmp_path, flags, sharing, compression, message
):
    with pytest.raises(DistilledEmbeddingError, match=message):
        build_student_from_teacher(
            data_bin, tiny_teacher.best, tmp_path, *flags, sharing=sharing,
            compression=compression,
        )


