"""FactorizedEmbedding: a V×d embedding stored as f(U)·W, which also owns the tied output path.

Like fairseq's ``AdaptiveInput``/``AdaptiveSoftmax`` pair, the module that represents the embedding is
the one that knows how to project hidden states back onto the vocabulary: the V×d matrix is never
materialised on the hot path, neither for lookups nor for logits.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_distilled_emb import factorization, quantization
from fairseq_distilled_emb.checkpoints import config_value
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules.compressed_embedding import (
    CompressedEmbedding,
    TeacherInit,
    register_compressed_embedding,
)


@register_compressed_embedding("low-rank")
class FactorizedEmbedding(CompressedEmbedding):
    """Embedding ``E ≈ f(U)·W`` with ``U ∈ R^{V×r}``, ``W ∈ R^{r×d}`` and f applied to U only.

    Exposes the attributes fairseq's encoder/decoder read from an ``nn.Embedding``
    (``num_embeddings``, ``embedding_dim``, ``padding_idx``). The padding row always yields zeros;
    fairseq's ``sqrt(d)`` scaling is applied by the encoder/decoder as for a dense embedding.
    """

    def __init__(self, num_embeddings, embedding_dim, rank, padding_idx, activation="relu",
                 bits=None, bits_from_update=0, scale_format="fp16"):
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
        # quantization-aware fine-tuning: whether f(U) is fake-quantized now is saved with the
        # factors, so a checkpoint decodes as it was validated (before or after the switch)
        self.bits, self.bits_from_update, self.scale_format = bits, bits_from_update, scale_format
        if bits is not None:
            self.register_buffer("fake_quantized", torch.tensor(int(bits_from_update <= 0)))

    @classmethod
    def from_args(cls, args, num_embeddings, embedding_dim, padding_idx):
        """The rank from ``--embedding-rank`` or ``--embedding-compression`` (exactly one)."""
        rank = factorization.resolve_rank(
            num_embeddings, embedding_dim, getattr(args, "embedding_rank", None),
            getattr(args, "embedding_compression", None))
        bits = getattr(args, "embedding_bits", None)
        activation = getattr(args, "embedding_activation", None) or "relu"
        scale_format = getattr(args, "embedding_scale_format", None)
        if scale_format is not None and bits is None:
            raise DistilledEmbeddingError(
                f"--embedding-scale-format {scale_format} needs --embedding-bits (it is how the "
                "fake-quantized rows store their scales)")
        scale_format = scale_format or "fp16"
        quantization.check_scale_format(scale_format)
        if getattr(args, "embedding_tail_bits", None) is not None or getattr(
                args, "embedding_head_rows", None) is not None:
            raise DistilledEmbeddingError(
                "--embedding-tail-bits/--embedding-head-rows are written by fairseq-distilled-emb "
                "export (two code widths, post-training); fine-tune with --embedding-bits only")
        if getattr(args, "embedding_dense_rows", None) is not None:
            raise DistilledEmbeddingError(
                "--embedding-dense-rows needs --embedding-factorization dense-head (low-rank "
                "factorizes every row): add it, or drop --embedding-dense-rows")
        if bits is not None:
            quantization.check_bits(bits)
            if activation not in quantization.RESCALABLE_ACTIVATIONS:
                raise DistilledEmbeddingError(
                    f"--embedding-bits needs --embedding-activation relu or linear (got "
                    f"{activation}): the per-component rescaling that makes f(U) quantizable "
                    "needs f(c·u) = c·f(u)")
        return cls(num_embeddings, embedding_dim, rank, padding_idx, activation=activation,
                   bits=bits, bits_from_update=getattr(args, "embedding_bits_from_update", 0) or 0,
                   scale_format=scale_format)

    def set_num_updates(self, num_updates):
        """fairseq's trainer calls this after each update: fake quantization starts at
        ``--embedding-bits-from-update``."""
        if self.bits is not None:
            self.fake_quantized.fill_(int(num_updates >= self.bits_from_update))

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

    def factors(self):
        """(f(U), W) as the forward pass uses them: with fake quantization on, f(U)'s components
        rescaled to one range and its rows quantized to ``bits`` (straight-through), and W
        rescaled back, exactly as :meth:`QuantizedEmbedding.from_factors` stores them.

        Without gradients (decoding, scoring) the pair is computed once
        (:meth:`CompressedEmbedding.kept_while_decoding`): ``fairseq-eval-lm --softmax-batch``
        projects every chunk through it, and recomputing f(U) per chunk cost ~9 % of a WikiText-2
        student's scoring time."""
        return self.kept_while_decoding(self._compute_factors)

    def _compute_factors(self):
        codes = self.activated_codes()
        if self.bits is None or not self.fake_quantized:
            return codes, self.W
        scales = quantization.column_scales(codes)
        return (quantization.fake_quantize_rows(codes * scales, self.bits, self.scale_format),
                self.W / scales[:, None])

    def forward(self, tokens):
        """f(U)[tokens]·W: gather the r-dim codes first, so a lookup costs r·d per token."""
        if self.bits is not None and self.fake_quantized:
            codes, weight = self.factors()
            embedded = F.linear(F.embedding(tokens, codes), weight.t())
        else:
            codes = self.activation_fn(F.embedding(tokens, self.U, self.padding_idx))
            embedded = F.linear(codes, self.W.t())
        if self.padding_idx is not None:
            embedded = embedded.masked_fill(tokens.eq(self.padding_idx).unsqueeze(-1), 0.0)
        return embedded

    def logits(self, hidden):
        """hidden·Eᵀ computed as (hidden·Wᵀ)·f(U)ᵀ: r·(V+d) MACs per token, never V×d."""
        codes, weight = self.factors()
        return F.linear(F.linear(hidden, weight), codes)

    def logits_into(self, hidden, out):
        """:meth:`logits` of a 2-D ``hidden`` written into ``out`` (no grad), a block of columns
        of a wider logits matrix (the tail of a dense-head embedding)."""
        codes, weight = self.factors()
        torch.mm(F.linear(hidden, weight), codes.t(), out=out)

    def materialize(self):
        """The dense V×d matrix f(U)·W (for export, the embedding-distillation loss and tests)."""
        codes, weight = self.factors()
        return codes @ weight

    def num_compressed_params(self):
        return factorization.factorized_embedding_params(
            self.num_embeddings, self.embedding_dim, self.rank
        )

    def size_description(self):
        quantized = "" if self.bits is None else f", f(U) fake-quantized to int{self.bits}"
        if self.bits is not None and self.scale_format == "log8":
            quantized += ", 1-byte log scales"
        return f"rank={self.rank}{quantized}"

    @classmethod
    def owns_key(cls, key):
        return key.endswith((".U", ".W", ".fake_quantized"))

    @classmethod
    def saved_dense_weight(cls, tensors, model_cfg):
        return cls.from_saved(tensors, model_cfg).materialize().detach().to(tensors["U"].dtype)

    @classmethod
    def from_saved(cls, tensors, model_cfg):
        """The module a saved state stands for (fake quantization as it was saved)."""
        (vocab, rank), dim = tensors["U"].shape, tensors["W"].shape[1]
        module = cls(vocab, dim, rank, None,
                     activation=config_value(model_cfg, "embedding_activation") or "relu",
                     bits=config_value(model_cfg, "embedding_bits") if "fake_quantized" in tensors
                     else None,
                     scale_format=config_value(model_cfg, "embedding_scale_format") or "fp16")
        module.load_state_dict({key: value.float() if value.is_floating_point() else value
                                for key, value in tensors.items()})
        return module

    @classmethod
    def saved_size(cls, tensors, model_cfg):
        (vocab, rank), dim = tensors["U"].shape, tensors["W"].shape[1]
        return {"vocab": vocab, "dim": dim, "size": f"rank={rank}", "rank": rank}

    def initialize_from(self, target, init: TeacherInit, name):
        """Reconstruction init (the paper's): fit f(U)·W to the teacher's E; ``svd``/``random``
        are the ablations. Logs the start's error against the rank-r and rank-(r-1) SVDs."""
        rank, activation, log = self.rank, self.activation, init.log
        svd_error, svd_error_below = factorization.svd_relative_errors(target, [rank, rank - 1])
        figures = {"method": init.method, "svd_error_rank_r": svd_error,
                   "svd_error_rank_r_minus_1": svd_error_below}
        if init.method == "random":
            error = factorization.relative_error(target, self.materialize().detach())
            log(f"{name}: random init (ablation); relative error {error:.4f} vs rank-{rank} SVD "
                f"{svd_error:.4f}")
            return {**figures, "relative_error": error}
        if init.method == "svd":
            u, w = factorization.initial_factors(target, rank, activation, "svd")
        else:
            result = factorization.fit_reconstruction(
                target, rank, activation=activation, max_steps=init.steps, lr=init.lr,
                min_relative_improvement=init.min_improvement, device=init.device,
                log=lambda step, error: log(
                    f"{name}: reconstruction step {step} relative error {error:.4f}"),
            )
            u, w = result.U.cpu(), result.W.cpu()
            figures.update(steps=result.steps, seconds=round(result.seconds, 2),
                           start_relative_error=result.start_relative_error)
            log(f"{name}: reconstruction done in {result.steps} steps, {result.seconds:.1f}s "
                f"(start {result.start_relative_error:.4f})")
        self.load_factors(u, w)
        error = factorization.relative_error(target, self.materialize().detach())
        log(f"{name}: --embedding-init {init.method} rank {rank} f={activation}: relative "
            f"Frobenius error {error:.4f} | rank-{rank} SVD {svd_error:.4f} | rank-{rank - 1} SVD "
            f"{svd_error_below:.4f}")
        if init.method == "svd" and activation not in ("linear",):
            init.warn(f"--embedding-init svd with --embedding-activation {activation}: f(U) "
                      "changes the SVD factors (use --embedding-activation linear for the linear "
                      "SVD baseline)")
        return {**figures, "relative_error": error}

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

    def __init__(self, embedding: CompressedEmbedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, hidden):
        return self.embedding.logits(hidden)
