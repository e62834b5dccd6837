"""QuantizedEmbedding: an embedding stored as integer codes, what ``export --embedding-bits`` writes.

Two sources, one module:

- a dense model's E (V×d): each row of E is stored as ``bits``-bit codes with a scale (fp16, or one
  byte in the log8 format of :mod:`quantization`) and an fp16 offset: post-training quantization, the baseline every user can try without training;
- a Distilled Embedding student's f(U)·W: the rows of f(U) (V×r, after the per-component rescaling
  of :func:`quantization.column_scales`) are stored as codes and W (r×d, small) stays fp32.

The codes stay integers in memory: a lookup dequantizes only the rows it gathers, and the tied
output logits go through the (dequantized, cached) table as the factorized embedding's do. The
module decodes only: its tensors are buffers, nothing here is trained.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from fairseq_distilled_emb import quantization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules.compressed_embedding import (
    CompressedEmbedding,
    register_compressed_embedding,
)

#: this kind's tensors in a saved model state (relative to the module)
QUANTIZED_KEYS = ("codes", "code_scales", "code_offsets", "code_scale_unit", "code_projection",
                  "code_shape")


@register_compressed_embedding("quantized")
class QuantizedEmbedding(CompressedEmbedding):
    """E ≈ dequantize(codes) (dense source) or dequantize(codes)·W (low-rank source)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx, bits, rank: Optional[int] = None,
                 scale_format: str = "fp16"):
        super().__init__()
        quantization.check_bits(bits)
        quantization.check_scale_format(scale_format)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.bits, self.rank = padding_idx, bits, rank
        self.width, self.scale_format = rank or embedding_dim, scale_format
        row_bytes = -(-self.width * bits // 8)
        log_scales = scale_format == "log8"
        self.register_buffer("codes", torch.zeros(num_embeddings, row_bytes, dtype=torch.uint8))
        self.register_buffer("code_scales", torch.ones(
            num_embeddings, dtype=torch.uint8 if log_scales else quantization.SCALE_DTYPE))
        self.register_buffer("code_offsets", torch.zeros(num_embeddings, dtype=quantization.SCALE_DTYPE))
        self.register_buffer("code_scale_unit", torch.ones(1) if log_scales else None)
        self.register_buffer("code_shape", torch.tensor([num_embeddings, self.width, bits]))
        self.register_buffer("code_projection",
                             torch.zeros(rank, embedding_dim) if rank else None)

    @classmethod
    def from_args(cls, args, num_embeddings, embedding_dim, padding_idx):
        """The shape ``export --embedding-bits`` recorded in the model config."""
        bits = getattr(args, "embedding_bits", None)
        if bits is None:
            raise DistilledEmbeddingError(
                "--embedding-factorization quantized is written by fairseq-distilled-emb export "
                "--embedding-bits; it needs --embedding-bits and cannot be trained")
        return cls(num_embeddings, embedding_dim, padding_idx, bits,
                   rank=getattr(args, "embedding_rank", None),
                   scale_format=getattr(args, "embedding_scale_format", None) or "fp16")

    @classmethod
    def from_dense(cls, matrix, bits, padding_idx=None, scale_format="fp16"):
        """Post-training codes of a dense E (V×d)."""
        module = cls(matrix.size(0), matrix.size(1), padding_idx, bits, scale_format=scale_format)
        module._store(quantization.quantize_rows(matrix, bits, scale_format))
        return module

    @classmethod
    def from_factors(cls, codes, weight, bits, padding_idx=None, scale_format="fp16"):
        """Codes of a trained f(U) (V×r, activated) with W (r×d): each component rescaled to one
        range first (free under ReLU), its inverse folded into the fp32 W."""
        scales = quantization.column_scales(codes)
        module = cls(codes.size(0), weight.size(1), padding_idx, bits, rank=codes.size(1),
                     scale_format=scale_format)
        module._store(quantization.quantize_rows(codes.float() * scales, bits, scale_format))
        module.code_projection.copy_(weight.float() / scales[:, None])
        return module

    @torch.no_grad()
    def _store(self, packed):
        self.codes.copy_(packed.codes)
        self.code_scales.copy_(packed.scales)
        self.code_offsets.copy_(packed.offsets)
        if packed.scale_unit is not None:
            self.code_scale_unit.copy_(packed.scale_unit)

    def _rows(self, index=None) -> torch.Tensor:
        """Dequantized rows of the code table (all, or those ``index`` gathers), fp32."""
        packed = quantization.RowCodes(self.codes, self.code_scales, self.code_offsets,
                                       self.code_scale_unit)
        if index is not None:
            packed = packed._replace(**{name: getattr(packed, name)[index]
                                        for name in ("codes", "scales", "offsets")})
        return quantization.dequantize_rows(packed, self.bits, self.width)

    def forward(self, tokens):
        rows = self._rows(tokens.reshape(-1)).view(*tokens.shape, self.width)
        if self.code_projection is not None:
            rows = F.linear(rows, self.code_projection.t())
        if self.padding_idx is not None:
            rows = rows.masked_fill(tokens.eq(self.padding_idx).unsqueeze(-1), 0.0)
        return rows

    def logits(self, hidden):
        """hidden·Eᵀ through the table, as (hidden·Wᵀ)·f(U)ᵀ for a low-rank source."""
        if self.code_projection is not None:
            hidden = F.linear(hidden, self.code_projection)
        # all dequantized rows, kept while decoding (it projects every step)
        return F.linear(hidden, self.kept_while_decoding(self._rows).to(hidden.dtype))

    def materialize(self):
        table = self._rows()
        return table if self.code_projection is None else table @ self.code_projection

    def num_compressed_params(self):
        """Stored numbers: codes, per-row scale and offset, and W."""
        return sum(buffer.numel() for name, buffer in self.named_buffers() if name != "code_shape")

    def size_description(self):
        source = f"rank={self.rank}, f(U)" if self.rank else "E"
        scales = ", 1-byte log scales" if self.scale_format == "log8" else ""
        return f"{source} in int{self.bits} codes{scales}"

    @classmethod
    def owns_key(cls, key):
        return key.rsplit(".", 1)[-1] in QUANTIZED_KEYS

    @classmethod
    def from_saved(cls, tensors):
        vocab, width, bits = (int(value) for value in tensors["code_shape"])
        projection = tensors.get("code_projection")
        dim = width if projection is None else projection.size(1)
        module = cls(vocab, dim, None, bits, rank=None if projection is None else width,
                     scale_format="log8" if "code_scale_unit" in tensors else "fp16")
        module.load_state_dict(tensors)
        return module

    @classmethod
    def saved_dense_weight(cls, tensors, model_cfg):
        with torch.no_grad():
            return cls.from_saved(tensors).materialize()

    @classmethod
    def saved_size(cls, tensors, model_cfg):
        module = cls.from_saved(tensors)
        return {"vocab": module.num_embeddings, "dim": module.embedding_dim,
                "size": module.size_description(), "rank": module.rank}

    def initialize_from(self, target, init, name):
        raise DistilledEmbeddingError(
            "--embedding-factorization quantized decodes only: train the low-rank student, then "
            "fairseq-distilled-emb export --embedding-bits")

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, {self.size_description()}, "
                f"padding_idx={self.padding_idx}")
