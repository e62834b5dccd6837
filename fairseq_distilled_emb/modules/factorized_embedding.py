"""FactorizedEmbedding: a V×d embedding stored as f(U)·W, which also owns the tied output path.

Like fairseq's ``AdaptiveInput``/``AdaptiveSoftmax`` pair, the module that represents the embedding is
the one that knows how to project hidden states back onto the vocabulary: the V×d matrix is never
materialised on the hot path, neither for lookups nor for logits.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_distilled_emb import factorization


class FactorizedEmbedding(nn.Module):
    """Embedding ``E ≈ f(U)·W`` with ``U ∈ R^{V×r}``, ``W ∈ R^{r×d}`` and f applied to U only.

    Exposes the attributes fairseq's encoder/decoder read from an ``nn.Embedding``
    (``num_embeddings``, ``embedding_dim``, ``padding_idx``). The padding row always yields zeros;
    fairseq's ``sqrt(d)`` scaling is applied by the encoder/decoder as for a dense embedding.
    """

    def __init__(self, num_embeddings, embedding_dim, rank, padding_idx, activation="relu"):
        super().__init__()
        factorization.validate_rank(num_embeddings, embedding_dim, rank)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        self.padding_idx = padding_idx
        self.activation = activation
        self.activation_fn = factorization.activation_fn(activation)
        self.U = nn.Parameter(torch.empty(num_embeddings, rank))
        self.W = nn.Parameter(torch.empty(rank, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self):
        """fairseq's normal init, split so that f(U)·W has roughly the dense init's N(0, 1/d) scale.

        The product's entry variance is r·E[f(u)²]·var(w) = r·σ_u²·σ_w²/2 under ReLU; U and W get
        the same σ = (2/(r·d))^¼ so neither factor is tiny (see factorization.balance_factors).
        """
        std = (2.0 / (self.rank * self.embedding_dim)) ** 0.25
        nn.init.normal_(self.U, mean=0.0, std=std)
        nn.init.normal_(self.W, mean=0.0, std=std)
        self._zero_padding_row()

    @torch.no_grad()
    def _zero_padding_row(self):
        if self.padding_idx is not None:
            self.U[self.padding_idx].zero_()

    @torch.no_grad()
    def load_factors(self, u, w):
        """Set U and W (e.g. from the reconstruction init), keeping the padding row at zero."""
        self.U.copy_(u)
        self.W.copy_(w)
        self._zero_padding_row()

    def activated_codes(self):
        """f(U) with the padding row forced to zero (V×r)."""
        return with_zero_row(self.activation_fn(self.U), self.padding_idx)

    def forward(self, tokens):
        """f(U)[tokens]·W: gather the r-dim codes first, so a lookup costs r·d per token."""
        codes = self.activation_fn(F.embedding(tokens, self.U, self.padding_idx))
        embedded = F.linear(codes, self.W.t())
        if self.padding_idx is not None:
            embedded = embedded.masked_fill(tokens.eq(self.padding_idx).unsqueeze(-1), 0.0)
        return embedded

    def logits(self, hidden):
        """hidden·Eᵀ computed as (hidden·Wᵀ)·f(U)ᵀ: r·(V+d) MACs per token, never V×d."""
        return F.linear(F.linear(hidden, self.W), self.activated_codes())

    def materialize(self):
        """The dense V×d matrix f(U)·W (for export, the embedding-distillation loss and tests)."""
        return self.activated_codes() @ self.W

    def num_factorized_params(self):
        return factorization.factorized_embedding_params(
            self.num_embeddings, self.embedding_dim, self.rank
        )

    def extra_repr(self):
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, "
            f"activation={self.activation}, padding_idx={self.padding_idx}"
        )


def with_zero_row(matrix, row):
    """``matrix`` with ``row`` zeroed, out of place (differentiable; ``row`` None: unchanged)."""
    if row is None:
        return matrix
    mask = torch.ones_like(matrix[:, :1])
    mask[row] = 0
    return matrix * mask


class FactorizedOutputProjection(nn.Module):
    """The decoder's tied output layer: logits through the shared factors of ``embedding``."""

    def __init__(self, embedding: FactorizedEmbedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, hidden):
        return self.embedding.logits(hidden)
