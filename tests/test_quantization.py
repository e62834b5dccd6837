"""The per-row code math (fairseq_distilled_emb/quantization.py): packing, affine codes, the
straight-through fake quantization and the per-component rescaling."""

import pytest
import torch

from fairseq_distilled_emb import quantization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import FactorizedEmbedding


@pytest.mark.parametrize("bits", quantization.SUPPORTED_BITS)
def test_packing_round_trips_exactly_and_takes_the_bytes_it_says(bits):
    torch.manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (9, 13), dtype=torch.uint8)
    packed = quantization.pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (9, -(-13 * bits // 8))
    assert torch.equal(quantization.unpack_codes(packed, bits, 13), codes)
    # a row's codes start on a byte boundary: unpacking gathered rows gives those rows
    assert torch.equal(quantization.unpack_codes(packed[[4, 0]], bits, 13), codes[[4, 0]])


def test_four_bit_codes_are_two_per_byte_low_nibble_first():
    codes = torch.tensor([[1, 2, 15, 0, 7]], dtype=torch.uint8)
    assert quantization.pack_codes(codes, 4).tolist() == [[0x21, 0x0F, 0x07]]


def test_affine_codes_keep_each_row_within_half_a_step_and_zero_exact():
    torch.manual_seed(0)
    matrix = torch.relu(torch.randn(50, 30))
    matrix[3] = 0.0
    for bits in (8, 4, 2):
        packed = quantization.quantize_rows(matrix, bits)
        assert packed.scales.dtype == packed.offsets.dtype == torch.float16
        rows = quantization.dequantize_rows(packed, bits, 30)
        step = packed.scales.float()[:, None]
        assert torch.all((rows - matrix).abs() <= step / 2 + 1e-3 * step)
        assert torch.equal(rows[3], torch.zeros(30))  # the padding row of f(U) stays zero
        assert torch.equal(rows[matrix == 0], torch.zeros(int((matrix == 0).sum())))
    assert quantization.packed_row_bytes(30, 4) == 15 + 4


def test_log8_scales_are_one_byte_never_below_the_rows_spread_and_at_most_a_sixteenth_octave_above():
    torch.manual_seed(0)
    matrix = torch.relu(torch.randn(60, 15)) * 10 ** (torch.rand(60, 1) * 4 - 3)
    matrix[3] = 0.0
    matrix[7] = 0.25  # a constant row: no spread
    for bits in (8, 4, 3):
        packed = quantization.quantize_rows(matrix, bits, "log8")
        assert packed.scales.dtype == torch.uint8 and packed.offsets.dtype == torch.float16
        assert packed.scale_unit.dtype == torch.float32 and packed.scale_unit.shape == (1,)
        scales = quantization.stored_scales(packed)
        spread = matrix.max(1).values - packed.offsets.float()
        need = spread / (2 ** bits - 1)
        varying = need > 0
        assert torch.all(scales[varying] >= need[varying] * (1 - 1e-6))
        assert torch.all(scales[varying] <= need[varying] * 2 ** (1 / 16) * (1 + 1e-6))
        rows = quantization.dequantize_rows(packed, bits, 15)
        # no code clips: every entry is within half a step of its row's stored scale
        assert torch.all((rows - matrix).abs() <= scales[:, None] / 2 + 1e-6 * scales[:, None])
        assert torch.equal(rows[3], torch.zeros(15))
        assert torch.equal(rows[7], packed.offsets[7].float().expand(15))
    assert quantization.packed_row_bytes(15, 3, "log8") == 6 + 3
    assert quantization.packed_row_bytes(15, 3) == 6 + 4


def test_unknown_scale_formats_are_one_clear_error():
    with pytest.raises(DistilledEmbeddingError) as error:
        quantization.check_scale_format("fp8")
    assert str(error.value) == ("--embedding-scale-format fp8 is not supported: choose one of "
                                "fp16, log8")


def test_fake_quantization_forwards_the_codes_and_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    matrix = torch.randn(20, 8, requires_grad=True)
    out = quantization.fake_quantize_rows(matrix, 4)
    expected = quantization.dequantize_rows(quantization.quantize_rows(matrix, 4), 4, 8)
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)
    weights = torch.randn(20, 8)
    (out * weights).sum().backward()
    assert torch.equal(matrix.grad, weights)


def test_rescaling_components_leaves_the_product_and_sets_every_column_max_to_one():
    torch.manual_seed(0)
    embedding = FactorizedEmbedding(200, 32, 6, padding_idx=1)
    with torch.no_grad():
        embedding.U[:, 2] *= 50  # one component with a much larger range
    codes = embedding.activated_codes().detach()
    scales = quantization.column_scales(codes)
    scaled = codes * scales
    assert torch.allclose(scaled.amax(dim=0), torch.ones(6))
    assert torch.allclose(scaled @ (embedding.W / scales[:, None]), codes @ embedding.W,
                          rtol=1e-5, atol=1e-6)
    assert torch.equal(quantization.column_scales(torch.zeros(4, 3)), torch.ones(3))
