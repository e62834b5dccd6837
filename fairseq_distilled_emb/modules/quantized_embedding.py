"""QuantizedEmbedding: an embedding stored as integer codes, what ``export --embedding-bits`` writes.

Two sources, one module:

- a dense model's E (V×d): each row of E is stored as ``bits``-bit codes with a scale (fp16, or one
  byte in the log8 format of :mod:`quantization`) and an fp16 offset: post-training quantization, the baseline every user can try without training;
- a Distilled Embedding student's f(U)·W: the rows of f(U) (V×r, after the per-component rescaling
  of :func:`quantization.column_scales`) are stored as codes and W (r×d, small) stays fp32
  (fp16 with ``export --embedding-w-fp16``; it is upcast on load).

Rows can be stored at two widths ("bands"): the first ``head_rows`` rows with ``bits``-bit codes,
the rest with ``tail_bits`` (``export --embedding-tail-bits T --embedding-head-rows K``).
fairseq-preprocess sorts a dictionary by frequency, so the head is the most frequent words and the
tail the rarest: on the cpu profile's 16x student (1-byte scales, W in fp16), int4 for the 5,650
most frequent of 8,008 rows and int3 for the rest scored 36.38 valid BLEU at 90.0x fewer bytes than
fp32 E, against 36.40 for int4 everywhere (85.6x) and 35.44 for int3 everywhere (102.8x). Each
band is its own :class:`quantization.RowCodes` (its log8 unit too); a band needs no row index,
only the split.

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
                  "code_shape", "tail_codes", "tail_scales", "tail_offsets", "tail_scale_unit",
                  "tail_shape")
#: the buffer names of a band's RowCodes fields (codes, scales, offsets, scale_unit)
BANDS = {"head": ("codes", "code_scales", "code_offsets", "code_scale_unit"),
         "tail": ("tail_codes", "tail_scales", "tail_offsets", "tail_scale_unit")}


@register_compressed_embedding("quantized")
class QuantizedEmbedding(CompressedEmbedding):
    """E ≈ dequantize(codes) (dense source) or dequantize(codes)·W (low-rank source)."""

    integer_codes = True

    def __init__(self, num_embeddings, embedding_dim, padding_idx, bits, rank: Optional[int] = None,
                 scale_format: str = "fp16", tail_bits: Optional[int] = None,
                 head_rows: Optional[int] = None):
        super().__init__()
        quantization.check_bits(bits)
        quantization.check_scale_format(scale_format)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.bits, self.rank = padding_idx, bits, rank
        self.width, self.scale_format = rank or embedding_dim, scale_format
        self.tail_bits = tail_bits
        self.head_rows = check_bands(num_embeddings, bits, tail_bits, head_rows)
        self._register_band("head", self.head_rows, bits)
        self.register_buffer("code_shape", torch.tensor([num_embeddings, self.width, bits]))
        if tail_bits is not None:
            self._register_band("tail", num_embeddings - self.head_rows, tail_bits)
            self.register_buffer("tail_shape", torch.tensor([self.head_rows, tail_bits]))
        self.register_buffer("code_projection",
                             torch.zeros(rank, embedding_dim) if rank else None)

    def _register_band(self, band, rows, bits):
        codes, scales, offsets, unit = BANDS[band]
        log_scales = self.scale_format == "log8"
        self.register_buffer(codes, torch.zeros(rows, -(-self.width * bits // 8), dtype=torch.uint8))
        self.register_buffer(scales, torch.ones(
            rows, dtype=torch.uint8 if log_scales else quantization.SCALE_DTYPE))
        self.register_buffer(offsets, torch.zeros(rows, dtype=quantization.SCALE_DTYPE))
        self.register_buffer(unit, torch.ones(1) if log_scales else None)

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
                   scale_format=getattr(args, "embedding_scale_format", None) or "fp16",
                   tail_bits=getattr(args, "embedding_tail_bits", None),
                   head_rows=getattr(args, "embedding_head_rows", None))

    @classmethod
    def from_dense(cls, matrix, bits, padding_idx=None, scale_format="fp16", tail_bits=None,
                   head_rows=None):
        """Post-training codes of a dense E (V×d)."""
        module = cls(matrix.size(0), matrix.size(1), padding_idx, bits, scale_format=scale_format,
                     tail_bits=tail_bits, head_rows=head_rows)
        module._store(matrix)
        return module

    @classmethod
    def from_factors(cls, codes, weight, bits, padding_idx=None, scale_format="fp16",
                     tail_bits=None, head_rows=None):
        """Codes of a trained f(U) (V×r, activated) with W (r×d): each component rescaled to one
        range first (free under ReLU), its inverse folded into the fp32 W."""
        scales = quantization.column_scales(codes)
        module = cls(codes.size(0), weight.size(1), padding_idx, bits, rank=codes.size(1),
                     scale_format=scale_format, tail_bits=tail_bits, head_rows=head_rows)
        module._store(codes.float() * scales)
        module.code_projection.copy_(weight.float() / scales[:, None])
        return module

    @torch.no_grad()
    def _store(self, matrix):
        """Quantize ``matrix``'s rows into the band(s)."""
        for band, rows, bits in self._bands():
            packed = quantization.quantize_rows(matrix[rows], bits, self.scale_format)
            for name, value in zip(BANDS[band], packed):
                if value is not None:
                    getattr(self, name).copy_(value)

    def _bands(self):
        """(band, its rows of the table, its code width) for each stored band."""
        yield "head", slice(0, self.head_rows), self.bits
        if self.tail_bits is not None:
            yield "tail", slice(self.head_rows, self.num_embeddings), self.tail_bits

    def _band_rows(self, band, index=None) -> torch.Tensor:
        packed = quantization.RowCodes(*(getattr(self, name) for name in BANDS[band]))
        if index is not None:
            packed = packed._replace(**{name: getattr(packed, name)[index]
                                        for name in ("codes", "scales", "offsets")})
        bits = self.bits if band == "head" else self.tail_bits
        return quantization.dequantize_rows(packed, bits, self.width)

    def _rows(self, index=None) -> torch.Tensor:
        """Dequantized rows of the code table (all, or those ``index`` gathers), fp32."""
        if self.tail_bits is None:
            return self._band_rows("head", index)
        if index is None:
            return torch.cat([self._band_rows(band) for band, _, _ in self._bands()])
        # both bands dequantize every gathered row (clamped into range), the split picks
        head = self._band_rows("head", index.clamp(max=self.head_rows - 1))
        tail = self._band_rows("tail", (index - self.head_rows).clamp(min=0))
        return torch.where((index < self.head_rows)[:, None], head, tail)

    def forward(self, tokens):
        rows = self._rows(tokens.reshape(-1)).view(*tokens.shape, self.width)
        if self.code_projection is not None:
            rows = F.linear(rows, self.code_projection.t())
        if self.padding_idx is not None:
            rows = rows.masked_fill(tokens.eq(self.padding_idx).unsqueeze(-1), 0.0)
        return rows

    def _projected_and_table(self, hidden):
        """hidden·Wᵀ for a low-rank source (else hidden), and all dequantized rows, kept while
        decoding (it projects every step)."""
        if self.code_projection is not None:
            hidden = F.linear(hidden, self.code_projection)
        return hidden, self.kept_while_decoding(self._rows).to(hidden.dtype)

    def logits(self, hidden):
        """hidden·Eᵀ through the table, as (hidden·Wᵀ)·f(U)ᵀ for a low-rank source."""
        return F.linear(*self._projected_and_table(hidden))

    def logits_into(self, hidden, out):
        """:meth:`logits` of a 2-D ``hidden`` written into ``out`` (no grad), a block of columns
        of a wider logits matrix (a part of a dense-head embedding's codes)."""
        projected, table = self._projected_and_table(hidden)
        torch.mm(projected, table.t(), out=out)

    def materialize(self):
        table = self._rows()
        return table if self.code_projection is None else table @ self.code_projection

    def num_compressed_params(self):
        """Stored numbers: codes, per-row scale and offset, and W."""
        return sum(buffer.numel() for name, buffer in self.named_buffers()
                   if name not in ("code_shape", "tail_shape"))

    def size_description(self):
        source = f"rank={self.rank}, f(U)" if self.rank else "E"
        scales = ", 1-byte log scales" if self.scale_format == "log8" else ""
        tail = (f" (rows from {self.head_rows}: int{self.tail_bits})"
                if self.tail_bits is not None else "")
        return f"{source} in int{self.bits} codes{tail}{scales}"

    @classmethod
    def owns_key(cls, key):
        return key.rsplit(".", 1)[-1] in QUANTIZED_KEYS

    @classmethod
    def from_saved(cls, tensors):
        vocab, width, bits = (int(value) for value in tensors["code_shape"])
        projection = tensors.get("code_projection")
        dim = width if projection is None else projection.size(1)
        head_rows, tail_bits = None, None
        if "tail_shape" in tensors:
            head_rows, tail_bits = (int(value) for value in tensors["tail_shape"])
        module = cls(vocab, dim, None, bits, rank=None if projection is None else width,
                     scale_format="log8" if "code_scale_unit" in tensors else "fp16",
                     tail_bits=tail_bits, head_rows=head_rows)
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


def check_bands(num_embeddings: int, bits: int, tail_bits: Optional[int],
                head_rows: Optional[int]) -> int:
    """The head band's row count (all rows without a tail); one clear error for a bad split."""
    if tail_bits is None and head_rows is None:
        return num_embeddings
    if tail_bits is None or head_rows is None:
        raise DistilledEmbeddingError(
            "--embedding-tail-bits and --embedding-head-rows go together: the first K rows keep "
            "--embedding-bits, the rest get the tail's width")
    quantization.check_bits(tail_bits, "--embedding-tail-bits")
    if tail_bits >= bits:
        raise DistilledEmbeddingError(
            f"--embedding-tail-bits {tail_bits} must be below --embedding-bits {bits} (the tail "
            "holds the rarest words)")
    if not 0 < head_rows < num_embeddings:
        raise DistilledEmbeddingError(
            f"--embedding-head-rows {head_rows} must be between 1 and {num_embeddings - 1} (the "
            f"dictionary has {num_embeddings} rows)")
    return head_rows
