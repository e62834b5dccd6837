"""QuantizedEmbedding: an embedding stored as integer codes, what ``export --embedding-bits`` writes.

Two sources, one module:

- a dense model's E (V×d): each row of E is stored as ``bits``-bit codes with an fp16 scale and
  offset: post-training quantization, the baseline every user can try without training;
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
QUANTIZED_KEYS = ("codes", "code_scales", "code_offsets", "code_projection", "code_shape")


@register_compressed_embedding("quantized")
class QuantizedEmbedding(CompressedEmbedding):
    """E ≈ dequantize(codes) (dense source) or dequantize(codes)·W (low-rank source)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx, bits, rank: Optional[int] = None):
        super().__init__()
        quantization.check_bits(bits)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.bits, self.rank = padding_idx, bits, rank
        self.width = rank or embedding_dim
        row_bytes = -(-self.width * bits // 8)
        self.register_buffer("codes", torch.zeros(num_embeddings, row_bytes, dtype=torch.uint8))
        self.register_buffer("code_scales", torch.ones(num_embeddings, dtype=quantization.SCALE_DTYPE))
        self.register_buffer("code_offsets", torch.zeros(num_embeddings, dtype=quantization.SCALE_DTYPE))
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
                   rank=getattr(args, "embedding_rank", None))

    @classmethod
    def from_dense(cls, matrix, bits, padding_idx=None):
        """Post-training codes of a dense E (V×d)."""
        module = cls(matrix.size(0), matrix.size(1), padding_idx, bits)
        module._store(quantization.quantize_rows(matrix, bits))
        return module

    @classmethod
    def from_factors(cls, codes, weight, bits, padding_idx=None):
        """Codes of a trained f(U) (V×r, activated) with W (r×d): each component rescaled to one
        range first (free under ReLU), its inverse folded into the fp32 W."""
        scales = quantization.column_scales(codes)
        module = cls(codes.size(0), weight.size(1), padding_idx, bits, rank=codes.size(1))
        module._store(quantization.quantize_rows(codes.float() * scales, bits))
        module.code_projection.copy_(weight.float() / scales[:, None])
        return module

    @torch.no_grad()
    def _store(self, packed):
        self.codes.copy_(packed.codes)
        self.code_scales.copy_(packed.scales)
        self.code_offsets.copy_(packed.offsets)

    def _rows(self, index=None) -> torch.Tensor:
        """Dequantized rows of the code table (all, or those ``index`` gathers), fp32."""
        packed = quantization.RowCodes(self.codes, self.code_scales, self.code_offsets)
        if index is not None:
            packed = quantization.RowCodes(*(tensor[index] for tensor in packed))
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
        return F.linear(hidden, self._table().to(hidden.dtype))

    def _table(self):
        """All dequantized rows, kept until the codes change (decoding projects every step)."""
        key = (self.codes.data_ptr(), self.codes._version, self.code_scales._version)
        if getattr(self, "_cached_key", None) != key:
            self._cached_table, self._cached_key = self._rows(), key
        return self._cached_table

    def materialize(self):
        table = self._rows()
        return table if self.code_projection is None else table @ self.code_projection

    def num_compressed_params(self):
        """Stored numbers: codes, per-row scale and offset, and W."""
        return sum(buffer.numel() for name, buffer in self.named_buffers() if name != "code_shape")

    def size_description(self):
        source = f"rank={self.rank}, f(U)" if self.rank else "E"
        return f"{source} in int{self.bits} codes"

    @classmethod
    def owns_key(cls, key):
        return key.rsplit(".", 1)[-1] in QUANTIZED_KEYS

    @classmethod
    def from_saved(cls, tensors):
        vocab, width, bits = (int(value) for value in tensors["code_shape"])
        projection = tensors.get("code_projection")
        dim = width if projection is None else projection.size(1)
        module = cls(vocab, dim, None, bits, rank=None if projection is None else width)
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
