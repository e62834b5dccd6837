"""The math of Distilled Embedding, shared by the model, the task, the CLI and the benchmarks.

An embedding matrix E (V×d) is represented as f(U)·W with U (V×r) and W (r×d). This module owns:
rank <-> compression ratio, parameter counts, the truncated-SVD factors (the optimal *linear*
factorization, Eckart–Young), a sign-aware start that ReLU does not destroy, and the Adam
reconstruction fit that moves from that start towards rank-r quality.
"""

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from fairseq_distilled_emb.errors import DistilledEmbeddingError

logger = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "gelu", "tanh", "linear")


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The element-wise non-linearity f applied to U (only to U: never after the product)."""
    if name == "relu":
        return torch.relu
    if name == "gelu":
        return F.gelu
    if name == "tanh":
        return torch.tanh
    if name == "linear":
        return lambda x: x
    raise DistilledEmbeddingError(
        f"--embedding-activation {name!r} is not supported; choose one of {', '.join(ACTIVATIONS)}"
    )


# ----------------------------------------------------------------------------- parameter counting


def dense_embedding_params(num_embeddings: int, embedding_dim: int) -> int:
    return num_embeddings * embedding_dim


def factorized_embedding_params(num_embeddings: int, embedding_dim: int, rank: int) -> int:
    """U has V·r entries and W has r·d: r·(V+d) in all."""
    return rank * (num_embeddings + embedding_dim)


def compression_ratio(num_embeddings: int, embedding_dim: int, rank: int) -> float:
    dense = dense_embedding_params(num_embeddings, embedding_dim)
    return dense / factorized_embedding_params(num_embeddings, embedding_dim, rank)


def rank_for_compression(num_embeddings: int, embedding_dim: int, ratio: float) -> int:
    """The largest rank whose factorization has at most 1/ratio of the dense parameters."""
    if not ratio > 1:
        raise DistilledEmbeddingError(
            f"--embedding-compression {ratio} must be > 1 (it is dense/factorized parameters)"
        )
    budget = dense_embedding_params(num_embeddings, embedding_dim) / ratio
    rank = int(math.floor(budget / (num_embeddings + embedding_dim) + 1e-9))
    if rank <= 0:
        raise DistilledEmbeddingError(
            f"--embedding-compression {ratio} leaves no rank for V={num_embeddings}, "
            f"d={embedding_dim} (the largest usable ratio is "
            f"{compression_ratio(num_embeddings, embedding_dim, 1):.1f}); use a smaller ratio"
        )
    return rank


def validate_rank(num_embeddings: int, embedding_dim: int, rank: int) -> int:
    """Reject a rank that is not positive or that would not compress (r·(V+d) >= V·d)."""
    if rank <= 0:
        raise DistilledEmbeddingError(f"--embedding-rank {rank} must be a positive integer")
    if factorized_embedding_params(num_embeddings, embedding_dim, rank) >= dense_embedding_params(
        num_embeddings, embedding_dim
    ):
        largest = (num_embeddings * embedding_dim - 1) // (num_embeddings + embedding_dim)
        raise DistilledEmbeddingError(
            f"--embedding-rank {rank} would not compress an embedding of V={num_embeddings}, "
            f"d={embedding_dim}: r·(V+d) = "
            f"{factorized_embedding_params(num_embeddings, embedding_dim, rank):,} >= V·d = "
            f"{dense_embedding_params(num_embeddings, embedding_dim):,} (rank must be < the "
            f"embedding dimension {embedding_dim}; the largest rank that compresses is {largest})"
        )
    return rank


def resolve_rank(
    num_embeddings: int,
    embedding_dim: int,
    rank: Optional[int] = None,
    compression: Optional[float] = None,
) -> int:
    """Turn ``--embedding-rank`` or ``--embedding-compression`` (exactly one) into a valid rank."""
    if rank is not None and compression is not None:
        raise DistilledEmbeddingError(
            "--embedding-rank and --embedding-compression are mutually exclusive; give only one"
        )
    if rank is None and compression is None:
        raise DistilledEmbeddingError(
            "a distilled_transformer* architecture needs --embedding-rank R or "
            "--embedding-compression X (e.g. --embedding-compression 8)"
        )
    if compression is not None:
        rank = rank_for_compression(num_embeddings, embedding_dim, compression)
    return validate_rank(num_embeddings, embedding_dim, int(rank))


# ----------------------------------------------------------------------------- initial factors


def relative_error(target: torch.Tensor, approx: torch.Tensor) -> float:
    """‖approx − target‖_F / ‖target‖_F."""
    return (torch.linalg.norm(approx - target) / torch.linalg.norm(target)).item()


def truncated_svd_factors(target: torch.Tensor, rank: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Balanced rank-r SVD factors (A, B) with A·B the best rank-r approximation of target."""
    left, singular, right_t = torch.linalg.svd(target.float(), full_matrices=False)
    root = singular[:rank].sqrt()
    return left[:, :rank] * root, root.unsqueeze(1) * right_t[:rank]


def svd_relative_errors(target: torch.Tensor, ranks) -> List[float]:
    """Eckart–Young: the best rank-r errors for several r, from one computation of the spectrum."""
    energy = torch.linalg.svdvals(target.float()).pow(2)
    total = energy.sum()
    return [(energy[rank:].sum() / total).sqrt().item() for rank in ranks]


def svd_relative_error(target: torch.Tensor, rank: int) -> float:
    """Eckart–Young: the error of the best rank-r approximation, from the singular values alone."""
    return svd_relative_errors(target, [rank])[0]


def simplex_vertices(rank: int) -> torch.Tensor:
    """r vertices of a regular simplex centred at the origin of R^{r−1}, as an r×(r−1) matrix.

    Its columns are orthonormal and orthogonal to the all-ones vector, so the rows sum to zero:
    every point x of R^{r−1} is Σ aᵢ gᵢ with a = G·x, and adding a constant to all aᵢ keeps the sum.
    """
    if rank == 1:
        return torch.zeros(1, 0)
    centred = torch.eye(rank) - 1.0 / rank
    basis, _ = torch.linalg.qr(centred[:, : rank - 1])
    return basis


def sign_aware_factors(
    target: torch.Tensor, rank: int, margin: float = 1e-2
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Factors (U, W) with U > 0 whose product reproduces the rank-(r−1) SVD exactly, and more.

    Why: ReLU(U) is an arbitrary non-negative matrix, so rows of ReLU(U)·W are non-negative
    combinations of the r rows of W. Taking those rows as the vertices of a simplex around the origin
    of the top r−1 singular directions covers that whole subspace (see ../shared/DESIGN.md). The r-th
    singular direction z is then added to every row of W with weight c; a row's coefficient on z
    becomes c·Σuᵢ, which any row whose r-th SVD coefficient has the favourable sign can match exactly
    by raising its shift. So the start is never worse than the rank-(r−1) SVD and is usually better.
    ``margin`` keeps every entry of U strictly positive so that no unit starts dead under ReLU.
    """
    target = target.float()
    left, singular, right_t = torch.linalg.svd(target, full_matrices=False)
    root = singular.sqrt()
    x = left[:, : rank - 1] * root[: rank - 1]
    y = root[: rank - 1].unsqueeze(1) * right_t[: rank - 1]
    simplex = simplex_vertices(rank).to(target)
    coefficients = x @ simplex.t()  # V×r, each row sums to zero
    shift = coefficients.min(dim=1).values.neg().clamp_min(0) + margin * root[0]

    last_coefficient, last_direction = _last_direction(left, root, right_t, rank)
    weight, row_shift = _fit_last_direction(last_coefficient, shift, rank)
    u = coefficients + row_shift.unsqueeze(1)
    w = simplex @ y + weight * last_direction.unsqueeze(0)
    return u, w


def _last_direction(left, root, right_t, rank):
    """The r-th singular direction, signed so that most of its energy has a positive coefficient."""
    if rank > root.numel():
        raise DistilledEmbeddingError(f"rank {rank} exceeds the embedding's rank {root.numel()}")
    coefficient = left[:, rank - 1] * root[rank - 1]
    direction = root[rank - 1] * right_t[rank - 1]
    if root[rank - 1] ** 2 <= 1e-6 * root[0] ** 2:  # σ_r ≈ 0: nothing left to add but noise
        return torch.zeros_like(coefficient), torch.zeros_like(direction)
    if coefficient.clamp_max(0).pow(2).sum() > coefficient.clamp_min(0).pow(2).sum():
        coefficient, direction = -coefficient, -direction
    return coefficient, direction


def _fit_last_direction(coefficient, min_shift, rank):
    """Pick the weight c of z in W and each row's shift t ≥ min_shift to best match c·r·t = s."""
    positive = coefficient > 0
    if not positive.any():
        return torch.zeros(()), min_shift
    reachable = coefficient[positive] / (rank * min_shift[positive])
    best = None
    for quantile in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        weight = torch.quantile(reachable, quantile).clamp_min(1e-12)
        shift = torch.maximum(min_shift, coefficient / (weight * rank))
        error = (weight * rank * shift - coefficient).pow(2).sum()
        if best is None or error < best[0]:
            best = (error, weight, shift)
    return best[1], best[2]


def balance_factors(u: torch.Tensor, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rescale each rank component so U's column and W's row have the same RMS entry.

    f(U)·W is unchanged for ReLU and linear f (positively homogeneous), and the product's gradient
    steps are best conditioned: Adam moves every entry by about the learning rate, so a factor with
    tiny entries would see huge relative changes (and destroy the product in a few updates).
    """
    column_rms = u.pow(2).mean(dim=0).sqrt().clamp_min(1e-12)
    row_rms = w.pow(2).mean(dim=1).sqrt().clamp_min(1e-12)
    scale = (row_rms / column_rms).sqrt()
    return u * scale, w / scale.unsqueeze(1)


def initial_factors(
    target: torch.Tensor, rank: int, activation: str, method: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The starting (U, W) for ``--embedding-init {reconstruct,svd}`` (random is fairseq's init)."""
    if method == "reconstruct" and activation == "relu":
        return balance_factors(*sign_aware_factors(target, rank))
    # linear f: the SVD is optimal; gelu/tanh are close to linear near 0 so SVD is a fair start.
    # (Rescaling would change f(U)W for gelu/tanh, so only ReLU/linear factors are balanced.)
    u, w = truncated_svd_factors(target, rank)
    return balance_factors(u, w) if activation == "linear" else (u, w)


# ----------------------------------------------------------------------------- reconstruction fit


@dataclass
class ReconstructionResult:
    U: torch.Tensor
    W: torch.Tensor
    relative_error: float
    start_relative_error: float
    steps: int
    seconds: float
    history: List[Tuple[int, float]] = field(default_factory=list)


def fit_reconstruction(
    target: torch.Tensor,
    rank: int,
    activation: str = "relu",
    max_steps: int = 2000,
    lr: float = 3e-3,
    min_relative_improvement: float = 1e-3,
    check_interval: int = 50,
    device: Optional[torch.device] = None,
    log: Optional[Callable[[int, float], None]] = None,
) -> ReconstructionResult:
    """Minimise the MSE ‖f(U)W − E‖² with Adam from ``initial_factors`` and keep the best iterate.

    The target is normalised to unit RMS so one learning rate serves every embedding scale. Every
    ``check_interval`` steps the relative Frobenius error is measured; the fit stops when it improved
    by less than ``min_relative_improvement`` (relative) over the previous check. Returning the best
    iterate guarantees the result is never worse than the start (for ReLU: the rank-(r−1) SVD).
    """
    started = time.perf_counter()
    device = device or target.device
    target = target.detach().float().to(device)
    scale = target.pow(2).mean().sqrt().clamp_min(1e-12)
    normalised = target / scale
    f = activation_fn(activation)
    u0, w0 = initial_factors(normalised, rank, activation, "reconstruct")
    u = u0.clone().requires_grad_(True)
    w = w0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([u, w], lr=lr)

    with torch.no_grad():
        start_error = relative_error(normalised, f(u) @ w)
    best_error, best_u, best_w, previous = start_error, u0.clone(), w0.clone(), start_error
    history = [(0, start_error)]
    steps = 0
    for steps in range(1, max_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(f(u) @ w, normalised)
        loss.backward()
        optimizer.step()
        if steps % check_interval and steps != max_steps:
            continue
        with torch.no_grad():
            error = relative_error(normalised, f(u) @ w)
        history.append((steps, error))
        if log is not None:
            log(steps, error)
        if error < best_error:
            best_error, best_u, best_w = error, u.detach().clone(), w.detach().clone()
        if previous - error < min_relative_improvement * previous:
            break
        previous = error
    if activation in ("relu", "linear"):  # positively homogeneous: split the scale, rebalance
        best_u, best_w = balance_factors(best_u * scale.sqrt(), best_w * scale.sqrt())
    else:  # f(c·U) != c·f(U): only W may absorb the target's scale
        best_w = best_w * scale
    return ReconstructionResult(
        U=best_u,
        W=best_w,
        relative_error=best_error,
        start_relative_error=start_error,
        steps=steps,
        seconds=time.perf_counter() - started,
        history=history,
    )
