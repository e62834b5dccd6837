"""TensorTrainEmbedding: the tensor-train (TT-matrix) embedding baseline, tied to the output layer.

The peer method the paper compares against (Khrulkov et al., 2019, "Tensorized Embedding Layers").
The factorization itself is tensorly-torch's ``FactorizedEmbedding`` (``factorization="blocktt"``),
an optional extra (``pip install -e .[tensor-train]``); this module only adapts it to fairseq's
embedding interface and ties it to the decoder's output projection, like :class:`FactorizedEmbedding`.
"""

import math

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
from fairseq_distilled_emb.modules.factorized_embedding import with_zero_row

TENSOR_TRAIN_MODES = 3  # V and d are each split into 3 factors (Khrulkov et al. use 3 or 4)


def _tltorch():
    try:
        import tltorch
        from tltorch.utils import get_tensorized_shape
    except ImportError:
        raise DistilledEmbeddingError(
            "--embedding-factorization tensor-train needs tensorly-torch: "
            "pip install -e .[tensor-train] (or pip install tensorly-torch tensorly)"
        ) from None
    return tltorch, get_tensorized_shape


def tensorized_shape(num_embeddings, embedding_dim):
    """(rows, row modes, dim modes): rows ≥ V is the smallest count that splits into 3 modes ≥ 2.

    A vocabulary size is often prime or has one huge factor; the TT then covers a few extra rows
    that are never looked up, as Khrulkov et al. pad the vocabulary.
    """
    _, get_tensorized_shape = _tltorch()
    rows = num_embeddings
    while True:
        row_modes, dim_modes = get_tensorized_shape(
            rows, embedding_dim, order=TENSOR_TRAIN_MODES, min_dim=2, verbose=False
        )
        if len(row_modes) == len(dim_modes) == TENSOR_TRAIN_MODES and max(row_modes) ** 2 <= rows:
            return rows, tuple(row_modes), tuple(dim_modes)
        rows += 1


def tensor_train_ranks(row_modes, dim_modes, rank):
    """TT ranks (1, r_1, …, 1) with r_k = min(r, sizes of the two sides of cut k).

    A rank above either side's size cannot be reached (the TT-SVD truncates it there), so the
    cores are built at the reachable ranks: shapes then survive a TT-SVD start and a reload.
    """
    sizes = [m * n for m, n in zip(row_modes, dim_modes)]
    cuts = [min(rank, math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, len(sizes))]
    return [1] + cuts + [1]


def tensor_train_params(row_modes, dim_modes, rank):
    """Parameters of the TT-matrix cores: Σ_k r_{k-1}·m_k·n_k·r_k."""
    ranks = tensor_train_ranks(row_modes, dim_modes, rank)
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(row_modes, dim_modes)))


def resolve_tensor_train_rank(num_embeddings, embedding_dim, rank=None, compression=None):
    """The TT rank from ``--embedding-rank`` or the largest within ``--embedding-compression``."""
    if (rank is None) == (compression is None):
        raise DistilledEmbeddingError(
            "set exactly one of --embedding-rank (the TT rank) or --embedding-compression"
        )
    _, row_modes, dim_modes = tensorized_shape(num_embeddings, embedding_dim)
    dense = factorization.dense_embedding_params(num_embeddings, embedding_dim)
    if rank is None:
        budget = dense / compression
        rank = 0
        while tensor_train_params(row_modes, dim_modes, rank + 1) <= budget:
            rank += 1
    if rank < 1 or tensor_train_params(row_modes, dim_modes, rank) >= dense:
        raise DistilledEmbeddingError(
            f"tensor-train rank {rank} for V={num_embeddings}, d={embedding_dim} would not "
            "compress the embedding: lower --embedding-rank or raise --embedding-compression"
        )
    return rank


@register_compressed_embedding("tensor-train")
class TensorTrainEmbedding(CompressedEmbedding):
    """A V×d embedding stored as a TT-matrix; lookups gather rows, logits use the full matrix."""

    def __init__(self, num_embeddings, embedding_dim, rank, padding_idx):
        super().__init__()
        tltorch, _ = _tltorch()
        rows, row_modes, dim_modes = tensorized_shape(num_embeddings, embedding_dim)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        self.padding_idx = padding_idx
        self.tensor_train = tltorch.FactorizedEmbedding(
            rows, embedding_dim, auto_tensorize=False, tensorized_num_embeddings=row_modes,
            tensorized_embedding_dim=dim_modes, factorization="blocktt",
            rank=tensor_train_ranks(row_modes, dim_modes, rank),
        )
        # V and the padding row, saved with the cores: the TT covers more rows than V, so a
        # checkpoint needs them to say its vocabulary (stats) and to cut its matrix (--dense)
        self.register_buffer("tensor_train_vocab", torch.tensor(
            [num_embeddings, -1 if padding_idx is None else padding_idx]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before ``tensor_train_vocab`` existed load as they did."""
        state_dict.setdefault(prefix + "tensor_train_vocab", self.tensor_train_vocab)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_args(cls, args, num_embeddings, embedding_dim, padding_idx):
        """The TT rank from ``--embedding-rank`` or ``--embedding-compression``."""
        if (getattr(args, "embedding_activation", None) or "relu") != "relu":
            raise DistilledEmbeddingError(
                "--embedding-activation applies to the low-rank factorization only; drop it with "
                "--embedding-factorization tensor-train"
            )
        rank = resolve_tensor_train_rank(num_embeddings, embedding_dim,
                                         getattr(args, "embedding_rank", None),
                                         getattr(args, "embedding_compression", None))
        return cls(num_embeddings, embedding_dim, rank, padding_idx)

    def forward(self, tokens):
        if not torch.is_grad_enabled():  # decoding: a row lookup in the cached contracted matrix
            return F.embedding(tokens, self._output_matrix())
        # tltorch turns the ids into TT multi-indices with np.unravel_index, which cannot read a
        # CUDA tensor (seen on an H100: "can't convert cuda:0 device type tensor to numpy"); the
        # ids go to the host for that, the cores stay on the device and are indexed there
        embedded = self.tensor_train(tokens.cpu()).to(tokens.device)
        if self.padding_idx is not None:
            embedded = embedded.masked_fill(tokens.eq(self.padding_idx).unsqueeze(-1), 0.0)
        return embedded

    def materialize(self):
        """The dense V×d matrix (padding row zero)."""
        matrix = self.tensor_train.weight.to_matrix()[: self.num_embeddings]
        return with_zero_row(matrix, self.padding_idx)

    def logits(self, hidden):
        """hidden·Eᵀ, with E contracted from the TT (V·d work, like a dense output layer).

        Folded to one 2-D matmul explicitly: for a non-contiguous 3-D ``hidden`` (fairseq's
        decoder transposes T×B) and a weight without grad, torch would otherwise broadcast E into
        a batched matmul, which made decoding 2x slower than the dense model's.
        """
        flat = F.linear(hidden.reshape(-1, hidden.size(-1)), self._output_matrix())
        return flat.view(*hidden.shape[:-1], flat.size(-1))

    def _output_matrix(self):
        """E: contracted on every call while gradients flow; without them (decoding looks up and
        projects once per generated token) reused (CompressedEmbedding.kept_while_decoding)."""
        return self.kept_while_decoding(self.materialize)

    @torch.no_grad()
    def load_matrix(self, matrix):
        """TT-SVD of ``matrix`` (V×d) into the cores: the closed-form start from a teacher's E."""
        rows = self.tensor_train.num_embeddings
        padded = matrix.new_zeros(rows, self.embedding_dim)
        padded[: self.num_embeddings] = matrix
        self.tensor_train.weight.init_from_matrix(padded.to(self.tensor_train.weight.factors[0]))

    def size_description(self):
        return f"tensor-train rank={self.rank}"

    @classmethod
    def owns_key(cls, key):
        return ".tensor_train." in key or key.endswith(".tensor_train_vocab")

    @classmethod
    def module_prefix(cls, key):
        return key.split(".tensor_train", 1)[0]

    @classmethod
    def from_saved(cls, tensors):
        """The module a saved state stands for, built at its cores' shapes; None for a checkpoint
        written before ``tensor_train_vocab`` was saved (its V is unknown)."""
        if "tensor_train_vocab" not in tensors:
            return None
        vocab, padding_idx = (int(value) for value in tensors["tensor_train_vocab"])
        cores = [tensors[key] for key in sorted(k for k in tensors if k != "tensor_train_vocab")]
        dim = math.prod(core.shape[2] for core in cores)
        module = cls(vocab, dim, max(core.shape[-1] for core in cores),
                     None if padding_idx < 0 else padding_idx)
        module.load_state_dict({key: value.float() for key, value in tensors.items()})
        return module

    @classmethod
    def saved_dense_weight(cls, tensors, model_cfg):
        module = cls.from_saved(tensors)
        if module is None:
            return super().saved_dense_weight(tensors, model_cfg)
        dtype = next(value.dtype for value in tensors.values() if value.is_floating_point())
        with torch.no_grad():
            return module.materialize().to(dtype)

    @classmethod
    def saved_size(cls, tensors, model_cfg):
        """V and d from a checkpoint that saved ``tensor_train_vocab``; unknown (None) before."""
        module = cls.from_saved(tensors)
        if module is None:
            rank = model_cfg.get("embedding_rank")
            return {"vocab": None, "dim": None,
                    "size": f"tensor-train rank={rank}" if rank else "tensor-train"}
        return {"vocab": module.num_embeddings, "dim": module.embedding_dim,
                "size": f"tensor-train rank={module.rank}"}

    def initialize_from(self, target, init: TeacherInit, name):
        """The TT-SVD of the teacher's E (the closed-form analogue of the reconstruction), or
        tensorly-torch's own init with ``--embedding-init random``."""
        if init.method != "random":
            self.load_matrix(target)
        error = factorization.relative_error(target, self.materialize().detach())
        init.log(
            f"{name}: tensor-train rank {self.rank} ({self.num_compressed_params():,} "
            f"params), {'random init' if init.method == 'random' else 'TT-SVD of the teacher'}: "
            f"relative Frobenius error {error:.4f}"
        )
        return {"method": init.method, "relative_error": error}

    def extra_repr(self):
        shape = self.tensor_train.tensor_shape
        return (f"{self.num_embeddings}, {self.embedding_dim}, tt_ranks={self.tensor_train.rank}, "
                f"modes={shape}, padding_idx={self.padding_idx}")

