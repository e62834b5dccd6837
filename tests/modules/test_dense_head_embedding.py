"""DenseHeadEmbedding (the K most frequent rows dense, f(U)·W for the rest): interface, size,
reconstruction start, bad flags, and the stock tools (train from a teacher, generate, stats,
export --dense, int8 codes of both parts)."""

import re

import pytest
import torch

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import DenseHeadEmbedding, QuantizedDenseHeadEmbedding
from fairseq_distilled_emb.modules.compressed_embedding import TeacherInit
from fairseq_distilled_emb.modules.dense_head_embedding import dense_head_params, resolve_dense_head
from helpers import (
    PLUGIN_DIR,
    build_model_from_flags,
    dictionary_size,
    hypotheses,
    run_distilled_emb,
    run_fairseq,
    student_train_args,
    target_log_probs,
)


@pytest.mark.parametrize("padding_idx", [1, 150])  # padding in the head, then in the tail
def test_lookup_and_logits_use_the_same_matrix_and_padding_stays_zero(padding_idx):
    torch.manual_seed(0)
    embedding = DenseHeadEmbedding(1000, 64, head_rows=100, rank=8, padding_idx=padding_idx)
    matrix = embedding.materialize()
    tokens = torch.tensor([[0, 99, 100, 999], [padding_idx, 3, 150, 1]])
    assert torch.allclose(embedding(tokens), matrix[tokens], atol=1e-6)
    assert embedding(tokens)[tokens.eq(padding_idx)].abs().sum() == 0
    assert matrix[padding_idx].abs().sum() == 0
    hidden = torch.randn(2, 4, 64)
    assert torch.allclose(embedding.logits(hidden), hidden @ matrix.t(), atol=1e-5)
    assert embedding.num_compressed_params() == sum(p.numel() for p in embedding.parameters())


@pytest.mark.parametrize("dense_rows, compression, rank", [(2000, 8, 17), (2000, 4, 51), (250, 32, 6)])
def test_compression_picks_the_largest_tail_rank_within_the_budget(dense_rows, compression, rank):
    """WikiText-2's shape (V=33,280, d=256): at 8x, 2,000 dense rows leave rank 17 for the other
    31,280 words; the recipe's distilled_4x_head2000 and distilled_32x_head250 keep ranks 51 and 6."""
    assert resolve_dense_head(33280, 256, dense_rows, compression=compression) == (dense_rows, rank)
    budget = factorization.dense_embedding_params(33280, 256) / compression
    assert (dense_head_params(33280, 256, dense_rows, rank) <= budget
            < dense_head_params(33280, 256, dense_rows, rank + 1))


def test_an_explicit_tail_rank_is_kept():
    assert resolve_dense_head(8008, 256, 128, rank=40) == (128, 40)


@pytest.mark.parametrize("rows,flags,message", [
    (None, dict(compression=8), "--embedding-factorization dense-head needs --embedding-dense-rows "
     "K (how many of the most frequent words keep dense rows, e.g. 2000)"),
    (1000, dict(compression=8), "--embedding-dense-rows 1000 must be between 1 and the vocabulary "
     "size minus one (999)"),
    (100, dict(rank=4, compression=8), "set exactly one of --embedding-rank (the tail's rank) or "
     "--embedding-compression"),
    (200, dict(compression=8), "--embedding-dense-rows 200 alone holds 12,800 parameters, more "
     "than 1/8 of V·d = 64,000: lower --embedding-dense-rows or --embedding-compression"),
    (100, dict(rank=60), "--embedding-rank 60 with --embedding-dense-rows 100 would not compress "
     "an embedding of V=1000, d=64: lower one of them"),
])
def test_bad_flags_are_one_clear_line(rows, flags, message):
    with pytest.raises(DistilledEmbeddingError) as error:
        resolve_dense_head(1000, 64, rows, **flags)
    assert str(error.value) == message


def test_reconstruction_start_copies_the_head_and_fits_the_tail():
    torch.manual_seed(0)
    target = torch.randn(1000, 64)
    target[1] = 0
    embedding = DenseHeadEmbedding(1000, 64, head_rows=100, rank=8, padding_idx=1)
    lines = []
    figures = embedding.initialize_from(target, TeacherInit(steps=300, log=lines.append), "E")
    assert torch.equal(embedding.materialize()[:100].detach(), target[:100])
    tail_error = factorization.relative_error(target[100:], embedding.tail.materialize().detach())
    assert figures["tail_relative_error"] == pytest.approx(tail_error, abs=1e-6)
    # within 1 % of the tail's best rank-8 approximation, and the head's rows are exact
    assert tail_error <= 1.01 * figures["tail_svd_error_rank_r"]
    whole = factorization.relative_error(target, embedding.materialize().detach())
    assert figures["relative_error"] == pytest.approx(whole, abs=1e-6)
    assert whole == pytest.approx(tail_error * target[100:].norm().item() / target.norm().item(),
                                  rel=1e-5)
    assert lines[-1] == (f"E: 100 dense rows + tail rank 8: relative Frobenius error {whole:.4f} "
                         f"(the tail's alone {tail_error:.4f})")


def test_architecture_ties_the_output_layer_to_the_dense_head(data_bin):
    _, _, model = build_model_from_flags(
        data_bin, "--share-all-embeddings", "--embedding-compression", "4",
        "--embedding-factorization", "dense-head", "--embedding-dense-rows", "20")
    embedding = model.decoder.embed_tokens
    assert isinstance(embedding, DenseHeadEmbedding)
    assert model.encoder.embed_tokens is embedding
    assert model.decoder.output_projection.embedding is embedding


def generate(data_bin, path, *extra):
    return run_fairseq(
        "generate", data_bin, *extra, "--path", path, "--gen-subset", "valid", "--beam", "2",
        "--batch-size", "50", "--cpu", "--required-batch-size-multiple", "1", "--max-len-b", "10")


PREFIX = "decoder.embed_tokens."


def test_dense_head_student_trains_from_the_teacher_and_exports(data_bin, tiny_teacher, tmp_path):
    save_dir = tmp_path / "head"
    train = run_fairseq("train", *student_train_args(
        data_bin, tiny_teacher.best, save_dir, 3, "--embedding-factorization", "dense-head",
        "--embedding-dense-rows", "20"))
    log = train.stdout + train.stderr
    assert re.search(r"20 dense rows \+ tail rank \d+: relative Frobenius error 0\.\d{4}", log)
    checkpoint = save_dir / "checkpoint_last.pt"
    student = generate(data_bin, checkpoint, "--user-dir", PLUGIN_DIR)
    assert len(hypotheses(student.stdout)) > 100
    vocabulary = dictionary_size(data_bin)
    _, rank = resolve_dense_head(vocabulary, 64, 20, compression=4)
    stats = run_distilled_emb("stats", checkpoint).stdout
    assert re.search(r"^compressed +(.+)$", stats, re.M)[1] == f"dense rows=20, tail rank={rank}"
    assert re.search(r"^embedding params +(.+)$", stats, re.M)[1] == \
        f"{20 * 64 + rank * (vocabulary - 20 + 64):,}"
    # --dense: a stock transformer (no plugin) translates exactly as the student does
    assert run_distilled_emb("export", "--dense", checkpoint, tmp_path / "dense.pt").returncode == 0
    dense = generate(data_bin, tmp_path / "dense.pt")
    assert hypotheses(dense.stdout) == hypotheses(student.stdout)
    # int8 codes of both parts (export --embedding-bits 8): the head's rows as a dense E's, the
    # tail's f(U) as a low-rank student's with W in fp32; tied, so stored once
    codes = tmp_path / "int8.pt"
    assert run_distilled_emb("export", "--embedding-bits", "8", checkpoint, codes).returncode == 0
    saved = load_checkpoint(codes)
    assert saved["cfg"]["model"]["embedding_factorization"] == "quantized-dense-head"
    model = saved["model"]
    assert (model["decoder.embed_tokens.head.codes"].dtype, model[
        "decoder.embed_tokens.head.codes"].shape) == (torch.uint8, (20, 64))
    assert model["decoder.embed_tokens.tail.codes"].shape == (vocabulary - 20, rank)
    assert model["decoder.embed_tokens.tail.code_projection"].dtype == torch.float32
    assert not any(key.endswith((".head", ".tail.U", ".tail.W")) for key in model)
    stats = run_distilled_emb("stats", codes).stdout
    assert re.search(r"^compressed +(.+)$", stats, re.M)[1] == (
        f"dense rows=20, tail rank={rank}, int8 codes")
    # parameters: one per code, W, and each row's fp16 scale and offset
    assert re.search(r"^embedding params +(.+)$", stats, re.M)[1] == \
        f"{20 * (64 + 2) + (vocabulary - 20) * (rank + 2) + rank * 64:,}"
    stored = 20 * (64 + 4) + (vocabulary - 20) * (rank + 4) + rank * 64 * 4 + 2 * 3 * 8
    fp32 = vocabulary * 64 * 4
    assert re.search(r"^embedding bytes +(.+)$", stats, re.M)[1] == (
        f"{stored:,} ({fp32 / stored:.1f}x fewer than fp32 E, {fp32 / 2 / stored:.1f}x fewer "
        "than fp16 E)")
    # stock fairseq-generate (--user-dir) decodes the codes: int8 rounding moves some near-tied
    # beams of this barely trained model (173 of 200 hypotheses unchanged when written), no more;
    # a wrong row or part would change nearly all
    decoded, trained_hypotheses = hypotheses(generate(data_bin, codes, "--user-dir",
                                                      PLUGIN_DIR).stdout), hypotheses(student.stdout)
    assert decoded.keys() == trained_hypotheses.keys()
    assert sum(decoded[key] == text for key, text in trained_hypotheses.items()) >= 0.8 * len(
        decoded)
    # E as stored against E as trained: int8 rounding of each part's rows (0.45 % here), and the
    # reference tokens' log-probabilities move by 0.005 on average (0.036 at most, 195 tokens)
    trained, stored = (kind.saved_dense_weight(
        {key[len(PREFIX):]: value for key, value in state.items() if key.startswith(PREFIX)},
        cfg) for kind, state, cfg in ((DenseHeadEmbedding, load_checkpoint(checkpoint)["model"],
                                       saved["cfg"]["model"]),
                                      (QuantizedDenseHeadEmbedding, model, None)))
    assert (stored - trained).norm() / trained.norm() < 0.006
    fp32_scores, target, dictionary = target_log_probs(checkpoint)
    int8_scores, _, _ = target_log_probs(codes)
    assert (int8_scores - fp32_scores)[target.ne(dictionary.pad())].abs().mean() < 0.008
    # its own split is the dense/low-rank one: narrower tail codes are refused, nothing written
    refused = run_distilled_emb("export", "--embedding-bits", "8", "--embedding-tail-bits", "4",
                                "--embedding-head-rows", "100", checkpoint, tmp_path / "q.pt")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "fairseq-distilled-emb export: error: --embedding-tail-bits: a dense-head embedding's "
        "split is already its own (dense head, low-rank tail), both stored in --embedding-bits "
        "codes; drop --embedding-tail-bits and --embedding-head-rows")
    assert not (tmp_path / "q.pt").exists()


def test_logits_without_grad_fill_one_matrix_equal_to_the_trained_concatenation():
    """fairseq-eval-lm and generation score without grad: each block's matmul then writes
    straight into its columns of one matrix (no V-wide concatenation copy). Training keeps the
    concatenation, which autograd needs. fairseq's decoder hands the features over T×B
    transposed, so the hidden states are not contiguous."""
    torch.manual_seed(0)
    embedding = DenseHeadEmbedding(1000, 64, head_rows=100, rank=8, padding_idx=1)
    hidden = torch.randn(4, 2, 64).transpose(0, 1)
    trained = embedding.logits(hidden)
    with torch.no_grad():
        scored = embedding.logits(hidden)
    assert trained.requires_grad and trained.grad_fn.name() == "CatBackward0"
    assert scored.shape == (2, 4, 1000) and scored.is_contiguous() and scored.grad_fn is None
    torch.testing.assert_close(scored, trained.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(scored, hidden @ embedding.materialize().detach().t(),
                               rtol=0, atol=1e-5)


def test_logits_under_autocast_without_grad_are_autocast_as_the_trained_concatenation():
    """torch's out= is not autocast: inside an autocast region the blocks are concatenated."""
    torch.manual_seed(0)
    embedding = DenseHeadEmbedding(1000, 64, head_rows=100, rank=8, padding_idx=1)
    hidden = torch.randn(2, 4, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scored = embedding.logits(hidden)
    assert scored.dtype == torch.bfloat16
    torch.testing.assert_close(scored.float(), hidden @ embedding.materialize().detach().t(),
                               rtol=0.02, atol=0.05)
