"""QuantizedEmbedding (integer codes) and quantization-aware fine-tuning of the factorized one."""

import pytest
import torch

from fairseq_distilled_emb import quantization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import FactorizedEmbedding, QuantizedEmbedding
from helpers import build_model_from_flags


def _trained_like_factors(seed=0):
    torch.manual_seed(seed)
    embedding = FactorizedEmbedding(300, 64, 10, padding_idx=1)
    with torch.no_grad():
        # components of ranges 100x apart, compensated in W (what training leaves: f(U)·W is
        # unchanged by such a rescaling, so nothing pulls the ranges together)
        ranges = 10 ** (torch.rand(10) * 4 - 2)
        embedding.U.mul_(ranges)
        embedding.W.div_(ranges[:, None])
        embedding.U[1].zero_()
    return embedding


@pytest.mark.parametrize("scale_format", quantization.SCALE_FORMATS)
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_codes_decode_exactly_what_fake_quantization_computes(bits, scale_format):
    source = _trained_like_factors()
    qat = FactorizedEmbedding(300, 64, 10, padding_idx=1, bits=bits, scale_format=scale_format)
    qat.load_state_dict(source.state_dict(), strict=False)
    assert int(qat.fake_quantized) == 1  # from update 0 by default
    quantized = QuantizedEmbedding.from_factors(
        source.activated_codes().detach(), source.W.detach(), bits, padding_idx=1,
        scale_format=scale_format)
    assert quantized.codes.dtype == torch.uint8
    assert quantized.codes.shape == (300, -(-10 * bits // 8))
    log8 = scale_format == "log8"
    assert quantized.code_scales.dtype == (torch.uint8 if log8 else torch.float16)
    # what a saved state reloads as: the same format, the same floats
    reloaded = QuantizedEmbedding.from_saved(quantized.state_dict())
    assert reloaded.scale_format == scale_format
    assert torch.equal(reloaded.materialize(), quantized.materialize())
    assert quantized.code_projection.dtype == torch.float32
    tokens = torch.tensor([[5, 1, 299], [0, 2, 1]])
    hidden = torch.randn(2, 3, 64)
    assert torch.equal(quantized(tokens), qat(tokens))
    assert torch.equal(quantized.logits(hidden), qat.logits(hidden))
    assert torch.equal(quantized.materialize(), qat.materialize().detach())
    assert torch.equal(quantized(tokens)[0, 1], torch.zeros(64))  # padding


def test_lookup_gathers_rows_of_the_same_table_the_logits_use():
    torch.manual_seed(0)
    dense = torch.randn(100, 16)
    quantized = QuantizedEmbedding.from_dense(dense, 4, padding_idx=None)
    table = quantized.materialize()
    tokens = torch.tensor([[3, 7, 99]])
    assert torch.equal(quantized(tokens)[0], table[[3, 7, 99]])
    hidden = torch.randn(1, 2, 16)
    assert torch.allclose(quantized.logits(hidden), hidden @ table.t(), rtol=1e-5, atol=1e-5)
    relative = (table - dense).norm() / dense.norm()
    assert 0.02 < relative < 0.15  # int4: a few per cent, not exact


@pytest.mark.parametrize("scale_format", quantization.SCALE_FORMATS)
def test_two_bands_store_head_and_tail_rows_at_their_own_widths(scale_format):
    """``--embedding-tail-bits 3 --embedding-head-rows 120``: rows 0-119 in int4, 120-299 in int3,
    each band exactly the one-width codes of its rows; lookups and logits use the same table."""
    source = _trained_like_factors()
    codes, weight = source.activated_codes().detach(), source.W.detach()
    mixed = QuantizedEmbedding.from_factors(codes, weight, 4, padding_idx=1,
                                            scale_format=scale_format, tail_bits=3, head_rows=120)
    assert (mixed.codes.shape, mixed.tail_codes.shape) == ((120, 5), (180, 4))  # ⌈10·4/8⌉, ⌈10·3/8⌉
    assert mixed.codes.dtype == mixed.tail_codes.dtype == torch.uint8
    assert mixed.tail_shape.tolist() == [120, 3]
    int4, int3 = (QuantizedEmbedding.from_factors(codes, weight, bits, scale_format=scale_format)
                  for bits in (4, 3))
    rescaled = codes * quantization.column_scales(codes)
    head_only = QuantizedEmbedding.from_factors(codes[:120], weight, 4, scale_format=scale_format)
    tail_only = QuantizedEmbedding.from_factors(codes[120:], weight, 3, scale_format=scale_format)
    # the bands quantize their own rows (the column rescaling is the whole table's)
    assert torch.equal(mixed._rows()[:120], quantization.dequantize_rows(quantization.quantize_rows(
        rescaled[:120], 4, scale_format), 4, 10))
    assert torch.equal(mixed._rows()[120:], quantization.dequantize_rows(quantization.quantize_rows(
        rescaled[120:], 3, scale_format), 3, 10))
    assert head_only.codes.shape == (120, 5) and tail_only.codes.shape == (180, 4)
    tokens = torch.tensor([[5, 1, 299], [119, 120, 0]])
    table = mixed.materialize()
    # the gathered rows are the table's, each from its band (the row-wise matmul may round apart)
    assert torch.equal(mixed._rows(tokens[1]), mixed._rows()[[119, 120, 0]])
    assert torch.allclose(mixed(tokens)[1], table[[119, 120, 0]], rtol=1e-5, atol=1e-6)
    assert torch.equal(mixed(tokens)[0, 1], torch.zeros(64))  # padding
    hidden = torch.randn(2, 3, 64)
    assert torch.allclose(mixed.logits(hidden), hidden @ table.t(), rtol=1e-5, atol=1e-5)
    reloaded = QuantizedEmbedding.from_saved(mixed.state_dict())
    assert (reloaded.head_rows, reloaded.tail_bits) == (120, 3)
    assert torch.equal(reloaded.materialize(), table)
    assert reloaded.size_description() == "rank=10, f(U) in int4 codes (rows from 120: int3)" + (
        ", 1-byte log scales" if scale_format == "log8" else "")
    # between one width and the other, row for row
    exact = codes @ weight
    error = [((m.materialize() - exact)[rows].norm() / exact[rows].norm()).item()
             for m, rows in ((int4, slice(0, 120)), (mixed, slice(0, 120)), (int3, slice(120, None)),
                             (mixed, slice(120, None)))]
    assert error[1] < error[2] and abs(error[3] - error[2]) < 0.2 * error[2]


@pytest.mark.parametrize("tail_bits,head_rows,message", [
    (3, None, "--embedding-tail-bits and --embedding-head-rows go together: the first K rows keep "
     "--embedding-bits, the rest get the tail's width"),
    (4, 100, "--embedding-tail-bits 4 must be below --embedding-bits 4 (the tail holds the "
     "rarest words)"),
    (1, 100, "--embedding-tail-bits 1 is not supported: choose one of 2, 3, 4, 5, 6, 7, 8"),
    (3, 300, "--embedding-head-rows 300 must be between 1 and 299 (the dictionary has 300 rows)"),
])
def test_a_bad_band_split_is_one_clear_error(tail_bits, head_rows, message):
    with pytest.raises(DistilledEmbeddingError) as error:
        QuantizedEmbedding(300, 64, 1, 4, rank=10, tail_bits=tail_bits, head_rows=head_rows)
    assert str(error.value) == message


def test_rescaled_factor_codes_keep_e_far_closer_than_naive_codes():
    """The issue's probe: naive per-row codes of f(U) lose the cancellation in f(U)·W; the
    per-component rescaling keeps it."""
    source = _trained_like_factors()
    codes, weight = source.activated_codes().detach(), source.W.detach()
    exact = codes @ weight
    naive = quantization.dequantize_rows(quantization.quantize_rows(codes, 4), 4, 10) @ weight
    rescaled = QuantizedEmbedding.from_factors(codes, weight, 4).materialize()
    naive_error = ((naive - exact).norm() / exact.norm()).item()
    rescaled_error = ((rescaled - exact).norm() / exact.norm()).item()
    assert rescaled_error < 0.25 * naive_error, (rescaled_error, naive_error)


def test_fake_quantization_starts_at_its_update():
    embedding = FactorizedEmbedding(300, 64, 10, padding_idx=1, bits=4, bits_from_update=5)
    plain = embedding.activated_codes() @ embedding.W
    assert int(embedding.fake_quantized) == 0
    assert torch.equal(embedding.materialize(), plain)
    embedding.set_num_updates(5)
    assert int(embedding.fake_quantized) == 1
    assert not torch.equal(embedding.materialize(), plain)
    # what is quantized now is saved with the factors
    assert embedding.state_dict()["fake_quantized"].item() == 1


def test_the_flags_build_a_fake_quantized_student(data_bin):
    _, _, model = build_model_from_flags(
        data_bin, "--share-all-embeddings", "--embedding-compression", "4",
        "--embedding-bits", "4", "--embedding-bits-from-update", "3")
    embedding = model.decoder.embed_tokens
    assert (embedding.bits, embedding.bits_from_update) == (4, 3)
    model.set_num_updates(3)  # what fairseq's trainer calls after each update
    assert int(embedding.fake_quantized) == 1
    assert embedding.size_description() == f"rank={embedding.rank}, f(U) fake-quantized to int4"


def test_the_flags_build_a_student_fake_quantized_with_log8_scales(data_bin):
    _, _, model = build_model_from_flags(
        data_bin, "--share-all-embeddings", "--embedding-compression", "4",
        "--embedding-bits", "3", "--embedding-scale-format", "log8")
    embedding = model.decoder.embed_tokens
    assert embedding.scale_format == "log8"
    assert embedding.size_description() == (
        f"rank={embedding.rank}, f(U) fake-quantized to int3, 1-byte log scales")
    codes, weight = embedding.factors()
    expected = quantization.dequantize_rows(quantization.quantize_rows(
        embedding.activated_codes() * quantization.column_scales(embedding.activated_codes()), 3,
        "log8"), 3, embedding.rank)
    # (straight-through: x + (q − x) is q up to float rounding)
    assert torch.allclose(codes, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("flags,message", [
    (("--embedding-bits", "3", "--embedding-scale-format", "fp8"), "--embedding-scale-format fp8 "
     "is not supported: choose one of fp16, log8"),
    (("--embedding-bits", "1"), "--embedding-bits 1 is not supported: choose one of 2, 3, 4, 5, "
     "6, 7, 8"),
    (("--embedding-bits", "4", "--embedding-tail-bits", "3"), "--embedding-tail-bits/"
     "--embedding-head-rows are written by fairseq-distilled-emb export (two code widths, "
     "post-training); fine-tune with --embedding-bits only"),
    (("--embedding-head-rows", "100",), "--embedding-tail-bits/--embedding-head-rows are written "
     "by fairseq-distilled-emb export (two code widths, post-training); fine-tune with "
     "--embedding-bits only"),
    (("--embedding-bits", "4", "--embedding-activation", "gelu"), "--embedding-bits needs "
     "--embedding-activation relu or linear (got gelu): the per-component rescaling that makes "
     "f(U) quantizable needs f(c·u) = c·f(u)"),
])
def test_bad_bits_flags_are_one_clear_error(data_bin, flags, message):
    with pytest.raises(DistilledEmbeddingError) as error:
        build_model_from_flags(data_bin, "--share-all-embeddings", "--embedding-compression", "4",
                               *flags)
    assert str(error.value) == message


def test_a_one_width_file_from_before_two_widths_loads_from_its_config_as_it_did():
    """A config saved before ``embedding_tail_bits``/``embedding_head_rows`` existed (no such
    fields) builds the one-width module, whose buffers take the saved state strictly."""
    from argparse import Namespace

    source = _trained_like_factors()
    saved = QuantizedEmbedding.from_factors(source.activated_codes().detach(), source.W.detach(),
                                            3, padding_idx=1, scale_format="log8").state_dict()
    assert not any(key.startswith("tail_") for key in saved)
    args = Namespace(embedding_bits=3, embedding_rank=10, embedding_scale_format="log8")
    rebuilt = QuantizedEmbedding.from_args(args, 300, 64, 1)
    rebuilt.load_state_dict(saved, strict=True)
    assert torch.equal(rebuilt.materialize(), QuantizedEmbedding.from_saved(saved).materialize())
    assert rebuilt.tail_bits is None and rebuilt.head_rows == 300
