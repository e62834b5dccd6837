"""Int8Linear: int8 codes of a Linear, computed by torch's dynamic int8 kernel on the CPU."""

import torch
import torch.nn as nn

from fairseq_distilled_emb.modules.int8_linear import Int8Linear, quantize_weight, use_int8_linears


def test_codes_are_symmetric_per_row_and_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(16, 32)
    codes, scales = quantize_weight(weight)
    assert codes.dtype == torch.int8 and codes.abs().max() == 127
    assert torch.allclose(scales, weight.abs().amax(dim=1) / 127)
    assert torch.all((codes.float() * scales[:, None] - weight).abs() <= scales[:, None] / 2 + 1e-7)


def test_the_int8_kernel_computes_what_the_dequantized_weight_gives_up_to_activation_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    quantized = Int8Linear.from_linear(linear)
    x = torch.randn(7, 5, 64)
    reference = nn.functional.linear(x, quantized.weight, quantized.bias)
    out = quantized(x)
    assert out.shape == (7, 5, 32)
    # dynamic quantization rounds the activations to 8 bits per call: a small, non-zero error
    assert 0 < (out - reference).abs().max() < 0.05 * reference.abs().max()
    assert (out - linear(x)).abs().max() < 0.05 * reference.abs().max()


def test_state_is_plain_tensors_and_reloads_into_a_fresh_module():
    torch.manual_seed(0)
    quantized = Int8Linear.from_linear(nn.Linear(8, 4))
    x = torch.randn(3, 8)
    quantized(x)  # packs the kernel: it must not become part of the state
    state = quantized.state_dict()
    assert {k: v.dtype for k, v in state.items()} == {
        "weight_codes": torch.int8, "weight_scales": torch.float32, "bias": torch.float32}
    assert list(quantized.children()) == []
    fresh = Int8Linear(8, 4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), quantized(x))


def test_only_the_layers_linears_are_replaced():
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Module()])
    model.layers[0].fc1 = nn.Linear(4, 4)
    model.layers[0].norm = nn.LayerNorm(4)
    model.output_projection = nn.Linear(4, 10)
    assert use_int8_linears(model) == 1
    assert isinstance(model.layers[0].fc1, Int8Linear)
    assert type(model.output_projection) is nn.Linear
    assert type(model.layers[0].norm) is nn.LayerNorm
