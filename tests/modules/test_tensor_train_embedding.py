"""TensorTrainEmbedding (the tensor-train baseline): interface, tying, rank choice, TT-SVD start, CLI."""

import re

import pytest
import torch

from fairseq.data import Dictionary

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import TensorTrainEmbedding
from fairseq_distilled_emb.modules.tensor_train_embedding import (
    resolve_tensor_train_rank,
    tensor_train_params,
    tensorized_shape,
)
from helpers import (
    PLUGIN_DIR,
    build_model_from_flags,
    hypotheses,
    run_distilled_emb,
    run_fairseq,
    student_train_args,
)


def test_lookup_and_logits_use_the_same_matrix_and_padding_stays_zero():
    torch.manual_seed(0)
    embedding = TensorTrainEmbedding(1000, 64, rank=4, padding_idx=1)
    matrix = embedding.materialize()
    tokens = torch.tensor([[0, 1, 5], [999, 3, 1]])
    assert torch.allclose(embedding(tokens), matrix[tokens], atol=1e-6)
    with torch.no_grad():  # the decoding path looks rows up in the cached matrix
        assert torch.allclose(embedding(tokens), matrix[tokens], atol=1e-6)
    assert embedding(tokens)[tokens.eq(1)].abs().sum() == 0
    assert matrix[1].abs().sum() == 0
    hidden = torch.randn(2, 3, 64)
    assert torch.allclose(embedding.logits(hidden), hidden @ matrix.t(), atol=1e-5)


def test_decoding_reuses_the_contracted_matrix_until_a_core_changes():
    embedding = TensorTrainEmbedding(1000, 64, rank=4, padding_idx=1).eval()
    hidden = torch.randn(3, 64)
    with torch.no_grad():
        first = embedding.logits(hidden)
        assert embedding._output_matrix() is embedding._output_matrix()
        next(embedding.parameters()).mul_(2.0)
        assert torch.allclose(embedding.logits(hidden), hidden @ embedding.materialize().t(),
                              atol=1e-5)
        assert not torch.allclose(embedding.logits(hidden), first)
    assert embedding.logits(hidden).requires_grad  # training path: contracted with gradients


def test_a_prime_vocabulary_is_padded_to_three_modes():
    rows, row_modes, dim_modes = tensorized_shape(503, 64)
    assert rows >= 503 and len(row_modes) == len(dim_modes) == 3
    assert int(torch.tensor(row_modes).prod()) == rows
    assert TensorTrainEmbedding(503, 64, rank=2, padding_idx=1).materialize().shape == (503, 64)


def test_compression_picks_the_largest_rank_within_the_budget():
    vocab, dim = 8004, 256
    rank = resolve_tensor_train_rank(vocab, dim, compression=8)
    _, row_modes, dim_modes = tensorized_shape(vocab, dim)
    budget = factorization.dense_embedding_params(vocab, dim) / 8
    assert tensor_train_params(row_modes, dim_modes, rank) <= budget
    assert tensor_train_params(row_modes, dim_modes, rank + 1) > budget
    assert TensorTrainEmbedding(vocab, dim, rank, 1).num_compressed_params() == \
        tensor_train_params(row_modes, dim_modes, rank)


@pytest.mark.parametrize("flags,message", [
    (dict(rank=4000), "would not compress"),
    (dict(rank=4, compression=8), "exactly one of"),
])
def test_bad_rank_flags_are_clear_errors(flags, message):
    with pytest.raises(DistilledEmbeddingError, match=message):
        resolve_tensor_train_rank(1000, 64, **flags)


def test_tt_svd_start_recovers_a_matrix_of_that_tt_rank():
    torch.manual_seed(0)
    source = TensorTrainEmbedding(1000, 64, rank=3, padding_idx=None)
    target = source.materialize().detach()
    student = TensorTrainEmbedding(1000, 64, rank=3, padding_idx=None)
    before = factorization.relative_error(target, student.materialize().detach())
    student.load_matrix(target)
    after = factorization.relative_error(target, student.materialize().detach())
    assert before > 0.9 and after < 1e-4


def test_tt_svd_start_keeps_the_core_shapes_so_the_checkpoint_reloads():
    """Ranks above a cut's size are capped at build time, as the TT-SVD caps them (V=8,008, 8x)."""
    rank = resolve_tensor_train_rank(8008, 128, compression=8)
    student = TensorTrainEmbedding(8008, 128, rank, padding_idx=1)
    assert min(student.tensor_train.rank[1:-1]) < rank  # the first cut (11·4 = 44) caps it
    student.load_matrix(torch.randn(8008, 128))
    TensorTrainEmbedding(8008, 128, rank, padding_idx=1).load_state_dict(student.state_dict())


def test_architecture_ties_the_output_layer_to_the_tensor_train(data_bin):
    _, _, model = build_model_from_flags(
        data_bin, "--share-all-embeddings", "--embedding-compression", "4",
        "--embedding-factorization", "tensor-train",
    )
    embedding = model.decoder.embed_tokens
    assert isinstance(embedding, TensorTrainEmbedding)
    assert model.encoder.embed_tokens is embedding
    assert model.decoder.output_projection.embedding is embedding
    assert not any(name.endswith("embed_tokens.weight") for name, _ in model.named_parameters())


def test_tensor_train_student_trains_from_the_teacher_and_decodes(data_bin, tiny_teacher, tmp_path):
    """The baseline row of the recipe: TT-SVD start from the teacher, fine-tune, fairseq-generate."""
    save_dir = tmp_path / "tt"
    train = run_fairseq("train", *student_train_args(
        data_bin, tiny_teacher.best, save_dir, 3, "--embedding-factorization", "tensor-train"))
    log = train.stdout + train.stderr
    error = float(re.search(r"TT-SVD of the teacher: relative Frobenius error ([\d.]+)", log)[1])
    assert 0 < error < 1
    assert float(re.search(r"ratio ([\d.]+)x", log)[1]) >= 4
    assert "emb_loss" in log
    result = run_fairseq(
        "generate", data_bin, "--user-dir", PLUGIN_DIR, "--path", save_dir / "checkpoint_last.pt",
        "--gen-subset", "valid", "--beam", "2", "--batch-size", "50", "--cpu",
        "--required-batch-size-multiple", "1", "--max-len-b", "10",
    )
    assert "\nH-" in result.stdout
    # the checkpoint records V (and the padding row): stats names the shape, --dense works and
    # the stock dense model (no plugin) translates as the tensor-train student does
    stats = run_distilled_emb("stats", save_dir / "checkpoint_last.pt")
    vocabulary = len(Dictionary.load(str(data_bin / "dict.en.txt")))
    assert re.search(r"^vocabulary × dim +(.+)$", stats.stdout, re.M)[1] == f"{vocabulary} × 64"
    export = run_distilled_emb("export", "--dense", save_dir / "checkpoint_last.pt",
                               tmp_path / "dense.pt")
    assert export.returncode == 0, export.stderr[-2000:]
    dense = run_fairseq(
        "generate", data_bin, "--path", tmp_path / "dense.pt",
        "--gen-subset", "valid", "--beam", "2", "--batch-size", "50", "--cpu",
        "--required-batch-size-multiple", "1", "--max-len-b", "10",
    )
    assert hypotheses(dense.stdout) == hypotheses(result.stdout)
    # a checkpoint written before V was recorded still loads, and keeps its --dense error line
    old = load_checkpoint(save_dir / "checkpoint_last.pt")
    old["model"] = {k: v for k, v in old["model"].items() if not k.endswith("tensor_train_vocab")}
    torch.save(old, tmp_path / "old.pt")
    old_decoded = run_fairseq(
        "generate", data_bin, "--user-dir", PLUGIN_DIR, "--path", tmp_path / "old.pt",
        "--gen-subset", "valid", "--beam", "2", "--batch-size", "50", "--cpu",
        "--required-batch-size-multiple", "1", "--max-len-b", "10",
    )
    assert hypotheses(old_decoded.stdout) == hypotheses(result.stdout)
    old_export = run_distilled_emb("export", "--dense", tmp_path / "old.pt",
                                   tmp_path / "old-dense.pt")
    assert old_export.returncode == 2 and old_export.stderr.strip().splitlines()[-1] == (
        "fairseq-distilled-emb export: error: --dense: a tensor-train embedding cannot be made "
        "dense from its checkpoint; export it without --dense")
    assert not (tmp_path / "old-dense.pt").exists()
    shipped = run_distilled_emb("export", "--fp16", save_dir / "checkpoint_last.pt",
                                tmp_path / "shipped.pt")
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    decoded = run_fairseq(
        "generate", data_bin, "--user-dir", PLUGIN_DIR, "--path", tmp_path / "shipped.pt",
        "--gen-subset", "valid", "--beam", "2", "--batch-size", "50", "--cpu",
        "--required-batch-size-multiple", "1", "--max-len-b", "10",
    )
    # the fp16 export keeps the TT cores in fp32: it translates as the fp32 checkpoint does
    reference, shipped_hypotheses = hypotheses(result.stdout), hypotheses(decoded.stdout)
    agreeing = sum(shipped_hypotheses[i] == reference[i] for i in reference)
    assert len(shipped_hypotheses) == len(reference) > 100 and agreeing >= 0.99 * len(reference)
    cores = [v for k, v in torch.load(tmp_path / "shipped.pt")["model"].items() if ".tensor_train." in k]
    assert cores and all(core.dtype == torch.float32 for core in cores)
