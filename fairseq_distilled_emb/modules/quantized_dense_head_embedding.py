"""QuantizedDenseHeadEmbedding: a dense-head student's embedding as integer codes, what
``export --embedding-bits`` writes for ``--embedding-factorization dense-head``.

Why: at a byte budget, not a parameter budget, a dense-head student in fp32 stores 4 bytes a
number, while post-training int4 codes of the teacher's whole E already reach ~8x fewer bytes.
Stored as codes too, the student reaches the budgets where quantization alone breaks (int3/int2 of
E). Each part is stored as :class:`QuantizedEmbedding` stores its source kind:

- the head, the K most frequent words' dense rows (K×d), as per-row codes of a dense E;
- the tail, f(U)·W of the other V−K words, as per-row codes of the (rescaled) f(U), W in fp32
  (fp16 with ``--embedding-w-fp16``).

Both at ``--embedding-bits`` (the head's rows are the frequent words, so narrower tail codes,
``--embedding-tail-bits``, are not offered: the split is already the dense/low-rank one). Lookup
and tied logits are the dense-head's, through the two parts' dequantized (kept) tables.
"""

from typing import Dict, Optional

import torch

from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules.compressed_embedding import (
    CompressedEmbedding,
    register_compressed_embedding,
)
from fairseq_distilled_emb.modules.dense_head_embedding import (
    blocks_fill_one_matrix,
    head_or_tail_rows,
    logits_in_blocks,
)
from fairseq_distilled_emb.modules.quantized_embedding import QUANTIZED_KEYS, QuantizedEmbedding

PARTS = ("head", "tail")


@register_compressed_embedding("quantized-dense-head")
class QuantizedDenseHeadEmbedding(CompressedEmbedding):
    """Rows ``0…K−1`` from ``head`` (codes of E's rows), rows ``K…V−1`` from ``tail`` (codes of
    f(U), times W); decoding only."""

    integer_codes = True

    def __init__(self, num_embeddings, embedding_dim, head_rows, rank, padding_idx, bits,
                 scale_format="fp16"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.head_rows, self.rank, self.padding_idx, self.bits = head_rows, rank, padding_idx, bits
        in_head = padding_idx is not None and padding_idx < head_rows
        self.head = QuantizedEmbedding(head_rows, embedding_dim, padding_idx if in_head else None,
                                       bits, scale_format=scale_format)
        self.tail = QuantizedEmbedding(
            num_embeddings - head_rows, embedding_dim,
            None if padding_idx is None or in_head else padding_idx - head_rows, bits, rank=rank,
            scale_format=scale_format)

    @classmethod
    def from_args(cls, args, num_embeddings, embedding_dim, padding_idx):
        """The shape ``export --embedding-bits`` recorded in the model config."""
        shape = {flag: getattr(args, flag, None)
                 for flag in ("embedding_bits", "embedding_dense_rows", "embedding_rank")}
        missing = [f"--{flag.replace('_', '-')}" for flag, value in shape.items() if value is None]
        if missing:
            raise DistilledEmbeddingError(
                "--embedding-factorization quantized-dense-head is written by fairseq-distilled-"
                f"emb export --embedding-bits from a dense-head student; it needs "
                f"{', '.join(missing)} and cannot be trained")
        return cls(num_embeddings, embedding_dim, shape["embedding_dense_rows"],
                   shape["embedding_rank"], padding_idx, shape["embedding_bits"],
                   scale_format=getattr(args, "embedding_scale_format", None) or "fp16")

    @classmethod
    def from_dense_head(cls, head, activated_tail, weight, bits, padding_idx=None,
                        scale_format="fp16"):
        """Codes of a trained dense-head embedding: its K×d ``head`` rows and its tail's f(U)
        (``activated_tail``, (V−K)×r, padding row zero) and W (r×d)."""
        module = cls(head.size(0) + activated_tail.size(0), head.size(1), head.size(0),
                     activated_tail.size(1), padding_idx, bits, scale_format)
        module.head = QuantizedEmbedding.from_dense(head, bits, module.head.padding_idx,
                                                    scale_format)
        module.tail = QuantizedEmbedding.from_factors(activated_tail, weight, bits,
                                                      module.tail.padding_idx, scale_format)
        return module

    def forward(self, tokens):
        return head_or_tail_rows(tokens, self.head_rows, self.head, self.tail)

    def logits(self, hidden):
        if not blocks_fill_one_matrix():
            return torch.cat([self.head.logits(hidden), self.tail.logits(hidden)], dim=-1)
        return logits_in_blocks(hidden, [(self.head_rows, self.head.logits_into),
                                         (self.num_embeddings - self.head_rows,
                                          self.tail.logits_into)])

    def materialize(self):
        return torch.cat([self.head.materialize(), self.tail.materialize()], dim=0)

    def num_compressed_params(self):
        """Stored numbers of both parts: codes, per-row scales and offsets, and W."""
        return self.head.num_compressed_params() + self.tail.num_compressed_params()

    def size_description(self):
        return describe(self.head_rows, self.rank, self.bits, self.head.scale_format)

    def initialize_from(self, target, init, name):
        raise DistilledEmbeddingError(
            "--embedding-factorization quantized-dense-head decodes only: train the dense-head "
            "student, then fairseq-distilled-emb export --embedding-bits")

    # --------------------------------------------- a saved model state (export, stats), unbuilt

    @classmethod
    def owns_key(cls, key):
        parts = key.rsplit(".", 2)
        return len(parts) == 3 and parts[1] in PARTS and parts[2] in QUANTIZED_KEYS

    @classmethod
    def module_prefix(cls, key):
        return key.rsplit(".", 2)[0]

    @classmethod
    def saved_parts(cls, tensors: Dict[str, torch.Tensor]) -> Dict[str, QuantizedEmbedding]:
        """The saved head and tail, each rebuilt as the :class:`QuantizedEmbedding` it is."""
        return {part: QuantizedEmbedding.from_saved(
            {key[len(part) + 1:]: value for key, value in tensors.items()
             if key.startswith(f"{part}.")}) for part in PARTS}

    @classmethod
    def saved_dense_weight(cls, tensors, model_cfg):
        with torch.no_grad():
            return torch.cat([part.materialize() for part in cls.saved_parts(tensors).values()])

    @classmethod
    def saved_size(cls, tensors, model_cfg):
        head, tail = cls.saved_parts(tensors).values()
        return {"vocab": head.num_embeddings + tail.num_embeddings, "dim": head.embedding_dim,
                "rank": tail.rank,
                "size": describe(head.num_embeddings, tail.rank, head.bits, head.scale_format)}

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, {self.size_description()}, "
                f"padding_idx={self.padding_idx}")


def describe(head_rows: int, rank: int, bits: int, scale_format: Optional[str]) -> str:
    """The size line of ``stats`` and the training log, e.g. ``dense rows=1000, tail rank=24,
    int8 codes``."""
    scales = ", 1-byte log scales" if scale_format == "log8" else ""
    return f"dense rows={head_rows}, tail rank={rank}, int{bits} codes{scales}"
