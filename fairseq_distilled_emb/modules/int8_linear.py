"""Int8Linear: a Linear layer stored as int8 codes, computed with PyTorch's dynamic int8 kernel.

What ``export --int8-body`` writes for every Linear of the Transformer body (attention projections,
feed-forward layers), so that the whole deployed file is integer codes plus small float vectors:
the weights are symmetric per-output-channel int8 (a float scale a row), as CTranslate2's int8 and
``torch.ao.quantization.quantize_dynamic`` store them. On the CPU the forward pass is torch's
dynamic quantized linear (activations quantized per call, int8 GEMM via fbgemm/onednn); elsewhere,
and where fairseq reads ``.weight`` directly (its fused self-attention path), the codes are
dequantized. Everything saved is a plain tensor, so weights-only loading keeps working.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def quantize_weight(weight: torch.Tensor):
    """Symmetric per-row int8 codes and fp32 scales of a 2-D weight."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    codes = torch.round(weight / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes, scales


class Int8Linear(nn.Module):
    """``y = x·Wᵀ + b`` with W in int8 codes; a drop-in for ``nn.Linear`` at inference."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_codes", torch.zeros(out_features, in_features,
                                                         dtype=torch.int8))
        self.register_buffer("weight_scales", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._forget_packed()

    def _forget_packed(self):
        # a plain attribute, not a submodule: the packed kernel is rebuilt, never saved
        self.__dict__["_packed"] = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        codes, scales = quantize_weight(linear.weight)
        module.weight_codes.copy_(codes)
        module.weight_scales.copy_(scales)
        module._forget_packed()
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (fairseq's fused attention reads ``q_proj.weight``)."""
        return self.weight_codes.float() * self.weight_scales[:, None]

    def _load_from_state_dict(self, *args, **kwargs):
        self._forget_packed()  # new codes: pack again on the next forward
        super()._load_from_state_dict(*args, **kwargs)

    def _dynamic(self):
        """torch's dynamic int8 Linear over the stored codes, packed once."""
        if self._packed is None:
            quantized = torch._make_per_channel_quantized_tensor(
                self.weight_codes, self.weight_scales.double(),
                torch.zeros(self.out_features, dtype=torch.long), 0)
            packed = torch.ao.nn.quantized.dynamic.Linear(self.in_features, self.out_features)
            packed.set_weight_bias(quantized, None if self.bias is None else self.bias.float())
            self.__dict__["_packed"] = packed
        return self._packed

    def forward(self, x):
        if x.device.type == "cpu" and x.dtype == torch.float32:
            return self._dynamic()(x)
        return F.linear(x, self.weight.to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 codes")


def body_linears(model: nn.Module):
    """``(parent, name, linear)`` of every nn.Linear of the encoder/decoder layers (not the
    embeddings' or the output projection's)."""
    for parent_name, parent in model.named_modules():
        if ".layers." not in f".{parent_name}.":
            continue
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                yield parent, name, child


def use_int8_linears(model: nn.Module) -> int:
    """Replace the body's Linear layers by Int8Linear (what an ``--int8-body`` export holds)."""
    replaced = 0
    for parent, name, linear in list(body_linears(model)):
        setattr(parent, name, Int8Linear.from_linear(linear))
        replaced += 1
    return replaced
