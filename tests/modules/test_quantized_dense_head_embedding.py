"""QuantizedDenseHeadEmbedding (a dense-head student's head and tail as integer codes): it decodes
as one matrix, stays within its codes' rounding of the trained embedding, keeps padding zero, and
its saved state is read back by ``stats``/``export --dense`` without building a model."""

from types import SimpleNamespace

import pytest
import torch

from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import (
    DenseHeadEmbedding,
    QuantizedDenseHeadEmbedding,
    compressed_keys,
)
from fairseq_distilled_emb.modules.compressed_embedding import TeacherInit


def trained_dense_head(padding_idx):
    """A dense-head embedding started from a random 'teacher' E (its SVD init), as trained."""
    torch.manual_seed(0)
    teacher = torch.randn(1000, 64) / 8
    embedding = DenseHeadEmbedding(1000, 64, head_rows=100, rank=8, padding_idx=padding_idx)
    embedding.initialize_from(teacher, TeacherInit(method="svd", log=lambda line: None,
                                                        warn=lambda line: None), "E")
    return embedding


def quantized(embedding, bits):
    return QuantizedDenseHeadEmbedding.from_dense_head(
        embedding.head_weight().detach(), embedding.tail.activated_codes().detach(),
        embedding.tail.W.detach(), bits, padding_idx=embedding.padding_idx)


@pytest.mark.parametrize("padding_idx", [1, 150])  # padding in the head, then in the tail
def test_codes_decode_as_one_matrix_close_to_the_trained_one(padding_idx):
    embedding = trained_dense_head(padding_idx)
    codes = quantized(embedding, 8)
    matrix, trained = codes.materialize(), embedding.materialize().detach()
    tokens = torch.tensor([[0, 99, 100, 999], [padding_idx, 3, 150, 1]])
    assert torch.allclose(codes(tokens), matrix[tokens], atol=1e-6)
    assert codes(tokens)[tokens.eq(padding_idx)].abs().sum() == 0
    assert matrix[padding_idx].abs().sum() == 0
    hidden = torch.randn(2, 4, 64)
    with torch.no_grad():
        assert torch.allclose(codes.logits(hidden), hidden @ matrix.t(), atol=1e-5)
    # int8 per-row codes: each row within half a step of its range (1/255 of it, /2) per element
    error = (matrix - trained).norm() / trained.norm()
    assert error < 0.01
    assert (quantized(embedding, 4).materialize() - trained).norm() / trained.norm() > 4 * error
    # stored numbers: the head's K·d codes + 2 a row, the tail's (V−K)·r codes + 2 a row, and W
    assert codes.num_compressed_params() == 100 * 64 + 2 * 100 + 900 * 8 + 2 * 900 + 8 * 64
    assert codes.size_description() == "dense rows=100, tail rank=8, int8 codes"


def test_a_saved_state_reads_back_without_building_a_model():
    codes = quantized(trained_dense_head(1), 4)
    state = {f"decoder.embed_tokens.{key}": value for key, value in codes.state_dict().items()}
    assert compressed_keys(state) == set(state)
    assert {key for key in state if QuantizedDenseHeadEmbedding.owns_key(key)} == set(state)
    for other in ("decoder.embed_tokens.codes", "decoder.embed_tokens.head",
                  "decoder.embed_tokens.tail.U", "decoder.embed_tokens.tail_codes"):
        assert not QuantizedDenseHeadEmbedding.owns_key(other), other  # low-rank / dense-head
    assert {QuantizedDenseHeadEmbedding.module_prefix(key) for key in state} == {
        "decoder.embed_tokens"}
    tensors = {key[len("decoder.embed_tokens."):]: value for key, value in state.items()}
    assert torch.equal(QuantizedDenseHeadEmbedding.saved_dense_weight(tensors, {}),
                       codes.materialize())
    assert QuantizedDenseHeadEmbedding.saved_size(tensors, {}) == {
        "vocab": 1000, "dim": 64, "rank": 8, "size": "dense rows=100, tail rank=8, int4 codes"}
    # the model config export writes rebuilds the same module, which loads the state
    args = SimpleNamespace(embedding_bits=4, embedding_dense_rows=100, embedding_rank=8,
                           embedding_scale_format=None)
    rebuilt = QuantizedDenseHeadEmbedding.from_args(args, 1000, 64, 1)
    rebuilt.load_state_dict(codes.state_dict())
    assert torch.equal(rebuilt.materialize(), codes.materialize())


def test_it_is_written_by_export_only():
    args = SimpleNamespace(embedding_bits=8, embedding_dense_rows=None, embedding_rank=None)
    with pytest.raises(DistilledEmbeddingError) as refused:
        QuantizedDenseHeadEmbedding.from_args(args, 1000, 64, 1)
    assert str(refused.value) == (
        "--embedding-factorization quantized-dense-head is written by fairseq-distilled-emb "
        "export --embedding-bits from a dense-head student; it needs --embedding-dense-rows, "
        "--embedding-rank and cannot be trained")
    with pytest.raises(DistilledEmbeddingError, match="^--embedding-factorization "
                       "quantized-dense-head decodes only: train the dense-head student, then "
                       "fairseq-distilled-emb export --embedding-bits$"):
        quantized(trained_dense_head(1), 8).initialize_from(torch.zeros(1000, 64), TeacherInit(),
                                                            "E")
