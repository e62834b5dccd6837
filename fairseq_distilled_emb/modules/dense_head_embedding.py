"""DenseHeadEmbedding: the K most frequent words keep dense rows, the rest share f(U)·W.

Why: a word-level vocabulary is Zipfian, and a uniform rank-r f(U)·W spends the same r numbers on a
word seen 50,000 times as on one seen 3 times. On WikiText-2 a rank-31 E starts at 4.8x the
teacher's perplexity (benchmarks/results/lm-wikitext2-cpu, rank-ceiling.json), while fairseq's
adaptive input, which gives frequent words wide rows and rare ones narrow rows, beats the student at
the same parameters. This kind keeps the teacher's own rows for the head (rows 0…K−1 of a fairseq
dictionary: the specials, then words by descending count) and factorizes only the tail, so the
budget that is left goes to rank for the rare words. The tail is a :class:`FactorizedEmbedding`,
reconstruction init and all; ``--embedding-compression`` counts K·d + r·(V−K+d) parameters.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules.compressed_embedding import (
    CompressedEmbedding,
    TeacherInit,
    register_compressed_embedding,
)
from fairseq_distilled_emb.modules.factorized_embedding import FactorizedEmbedding, with_zero_row


def dense_head_params(num_embeddings: int, embedding_dim: int, head_rows: int, rank: int) -> int:
    """K dense rows of d, plus the tail's f(U)·W: K·d + r·(V−K+d)."""
    return head_rows * embedding_dim + factorization.factorized_embedding_params(
        num_embeddings - head_rows, embedding_dim, rank)


def resolve_dense_head(num_embeddings, embedding_dim, head_rows, rank=None, compression=None):
    """``(K, r)`` from ``--embedding-dense-rows K`` and exactly one of ``--embedding-rank`` or
    ``--embedding-compression`` (then the largest r that keeps K·d + r·(V−K+d) ≤ V·d/X)."""
    if head_rows is None:
        raise DistilledEmbeddingError(
            "--embedding-factorization dense-head needs --embedding-dense-rows K (how many of the "
            "most frequent words keep dense rows, e.g. 2000)")
    if not 0 < head_rows < num_embeddings:
        raise DistilledEmbeddingError(
            f"--embedding-dense-rows {head_rows} must be between 1 and the vocabulary size "
            f"minus one ({num_embeddings - 1})")
    if (rank is None) == (compression is None):
        raise DistilledEmbeddingError(
            "set exactly one of --embedding-rank (the tail's rank) or --embedding-compression")
    dense = factorization.dense_embedding_params(num_embeddings, embedding_dim)
    tail = num_embeddings - head_rows
    if rank is None:
        rank = int((dense / compression - head_rows * embedding_dim) // (tail + embedding_dim))
        if rank < 1:
            raise DistilledEmbeddingError(
                f"--embedding-dense-rows {head_rows} alone holds {head_rows * embedding_dim:,} "
                f"parameters, more than 1/{compression:g} of V·d = {dense:,}: lower "
                "--embedding-dense-rows or --embedding-compression")
    if rank < 1 or dense_head_params(num_embeddings, embedding_dim, head_rows, rank) >= dense:
        raise DistilledEmbeddingError(
            f"--embedding-rank {rank} with --embedding-dense-rows {head_rows} would not compress "
            f"an embedding of V={num_embeddings}, d={embedding_dim}: lower one of them")
    return head_rows, rank


def head_or_tail_rows(tokens, head_rows, head, tail):
    """Each token's row from ``head`` (ids below ``head_rows``) or from ``tail`` (ids from
    ``head_rows`` on, renumbered from 0): both are gathered for every token, ids clamped into
    range, and the split picks (the tail costs r·d a token). Shared by the trained dense-head
    embedding and its integer codes."""
    rows = head(tokens.clamp(max=head_rows - 1))
    tail_rows = tail(tokens.sub(head_rows).clamp(min=0))
    return torch.where(tokens.lt(head_rows).unsqueeze(-1), rows, tail_rows)


def blocks_fill_one_matrix():
    """Whether :func:`logits_in_blocks` may run: torch's ``out=`` records no autograd and is not
    autocast, so training (and any autocast region) concatenates the blocks' logits instead."""
    return not (torch.is_grad_enabled() or torch.is_autocast_enabled("cuda")
                or torch.is_autocast_enabled("cpu"))


def logits_in_blocks(hidden, blocks):
    """``hidden``'s logits over consecutive row blocks, ``blocks`` = [(rows, logits_into)], each
    block's matmul writing straight into its columns of one matrix (see
    :func:`blocks_fill_one_matrix`). Concatenating the blocks' logits copies the V-wide matrix
    once more: a quarter of an 8x dense-head student's fairseq-eval-lm time on 2 CPU cores."""
    flat = hidden.reshape(-1, hidden.size(-1))
    out = flat.new_empty(flat.size(0), sum(rows for rows, _ in blocks))
    start = 0
    for rows, logits_into in blocks:
        logits_into(flat, out[:, start:start + rows])
        start += rows
    return out.view(*hidden.shape[:-1], out.size(-1))


@register_compressed_embedding("dense-head")
class DenseHeadEmbedding(CompressedEmbedding):
    """Rows ``0…K−1`` are a dense K×d table (``head``); rows ``K…V−1`` are ``tail``, a
    :class:`FactorizedEmbedding` f(U)·W of rank r. Tied logits: ``[h·headᵀ, (h·Wᵀ)·f(U)ᵀ]``."""

    def __init__(self, num_embeddings, embedding_dim, head_rows, rank, padding_idx,
                 activation="relu"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.head_rows, self.rank, self.padding_idx = head_rows, rank, padding_idx
        self.head = nn.Parameter(torch.empty(head_rows, embedding_dim))
        # the padding row lies in the head or in the tail (there, the tail's own row index)
        in_head = padding_idx is not None and padding_idx < head_rows
        self.head_padding_idx = padding_idx if in_head else None
        self.tail = FactorizedEmbedding(
            num_embeddings - head_rows, embedding_dim, rank,
            None if padding_idx is None or in_head else padding_idx - head_rows,
            activation=activation)
        nn.init.normal_(self.head, mean=0.0, std=embedding_dim ** -0.5)  # fairseq's Embedding
        self._zero_padding_row()

    @classmethod
    def from_args(cls, args, num_embeddings, embedding_dim, padding_idx):
        for flag in ("embedding_bits", "embedding_tail_bits"):
            if getattr(args, flag, None) is not None:
                raise DistilledEmbeddingError(
                    f"--{flag.replace('_', '-')} works with --embedding-factorization low-rank "
                    "only, not dense-head")
        head_rows, rank = resolve_dense_head(
            num_embeddings, embedding_dim, getattr(args, "embedding_dense_rows", None),
            getattr(args, "embedding_rank", None), getattr(args, "embedding_compression", None))
        return cls(num_embeddings, embedding_dim, head_rows, rank, padding_idx,
                   activation=getattr(args, "embedding_activation", None) or "relu")

    @torch.no_grad()
    def _zero_padding_row(self):
        if self.head_padding_idx is not None:
            self.head[self.head_padding_idx].zero_()

    def head_weight(self):
        """The head table with the padding row forced to zero (differentiable)."""
        return with_zero_row(self.head, self.head_padding_idx)

    def forward(self, tokens):
        return head_or_tail_rows(tokens, self.head_rows,
                                 lambda ids: F.embedding(ids, self.head_weight()), self.tail)

    def logits(self, hidden):
        """K·d + r·(V−K+d) MACs per token: the head's dot products, then the tail's factors."""
        head = self.head_weight()
        if not blocks_fill_one_matrix():
            return torch.cat([F.linear(hidden, head), self.tail.logits(hidden)], dim=-1)
        return logits_in_blocks(hidden, [
            (self.head_rows, lambda flat, out: torch.mm(flat, head.t(), out=out)),
            (self.num_embeddings - self.head_rows, self.tail.logits_into)])

    def materialize(self):
        return torch.cat([self.head_weight(), self.tail.materialize()], dim=0)

    def num_compressed_params(self):
        return dense_head_params(self.num_embeddings, self.embedding_dim, self.head_rows,
                                 self.rank)

    def size_description(self):
        return f"dense rows={self.head_rows}, tail rank={self.rank}"

    def initialize_from(self, target, init: TeacherInit, name):
        """The head copies the teacher's rows; the tail starts as ``low-rank`` does, from the
        teacher's remaining rows (``--embedding-init random`` leaves both at their init)."""
        if init.method != "random":
            with torch.no_grad():
                self.head.copy_(target[:self.head_rows])
            self._zero_padding_row()
        tail = self.tail.initialize_from(target[self.head_rows:], init, f"{name} tail")
        error = factorization.relative_error(target, self.materialize().detach())
        init.log(f"{name}: {self.head_rows} dense rows + tail rank {self.rank}: relative "
                 f"Frobenius error {error:.4f} (the tail's alone {tail['relative_error']:.4f})")
        return {**{f"tail_{key}": value for key, value in tail.items()},
                "relative_error": error}

    # --------------------------------------------- a saved model state (export, stats), unbuilt

    @classmethod
    def owns_key(cls, key):
        return key.endswith((".head", ".tail.U", ".tail.W"))

    @classmethod
    def module_prefix(cls, key):
        return key.rsplit(".", 2 if key.endswith((".tail.U", ".tail.W")) else 1)[0]

    @classmethod
    def saved_dense_weight(cls, tensors, model_cfg):
        tail = FactorizedEmbedding.saved_dense_weight(
            {"U": tensors["tail.U"], "W": tensors["tail.W"]}, model_cfg)
        return torch.cat([tensors["head"], tail.to(tensors["head"].dtype)], dim=0)

    @classmethod
    def saved_size(cls, tensors, model_cfg):
        (head_rows, dim), (tail_rows, rank) = tensors["head"].shape, tensors["tail.U"].shape
        return {"vocab": head_rows + tail_rows, "dim": dim, "rank": rank,
                "size": f"dense rows={head_rows}, tail rank={rank}"}

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, dense rows={self.head_rows}, "
                f"tail rank={self.rank}, padding_idx={self.padding_idx}")
