"""The math of fairseq_distilled_emb.factorization: rank <-> ratio, parameter counts, flag
validation, SVD factors, the sign-aware ReLU start and the reconstruction fit."""

import math

import pytest
import torch

from fairseq_distilled_emb import factorization as fz
from fairseq_distilled_emb.errors import DistilledEmbeddingError


def random_low_rank(rows, cols, rank, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g)


def decaying_spectrum(rows=300, cols=32, decay=0.8, scale=5.0, seed=0):
    """A matrix with singular values scale·decay^i along random orthonormal directions (RMS ≠ 1)."""
    g = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g))
    right, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g))
    singular = scale * decay ** torch.arange(cols, dtype=torch.float32)
    return (left * singular) @ right.t()


# ----------------------------------------------------------------------------- parameter counting


@pytest.mark.parametrize(
    "vocab, dim, ratio, expected",
    [
        (1000, 64, 4, 15),  # 16,000 / 1,064 = 15.04
        (1008, 64, 4, 15),  # the test data-bin's dictionary with transformer_tiny
        (32000, 512, 8, 62),  # 2,048,000 / 32,512 = 62.99: 63 would exceed the budget by 256
        (10000, 512, 2, 243),
        (300, 100, 7.5, 10),  # exactly on the budget: 10·400 = 4,000 = 30,000 / 7.5
        (90, 10, 9, 1),  # exactly on the budget with rank 1
        (40000, 1024, 16, 62),
    ],
)
def test_rank_for_compression_exact_values(vocab, dim, ratio, expected):
    rank = fz.rank_for_compression(vocab, dim, ratio)
    assert rank == expected
    budget = vocab * dim / ratio
    assert rank * (vocab + dim) <= budget
    assert (rank + 1) * (vocab + dim) > budget  # the largest such rank


@pytest.mark.parametrize("ratio", [1.5, 2, 3.3, 4, 8, 10, 16, 25])
@pytest.mark.parametrize("vocab, dim", [(1008, 64), (8000, 256), (32768, 512), (500, 1024)])
def test_rank_for_compression_is_the_largest_rank_within_budget(vocab, dim, ratio):
    rank = fz.rank_for_compression(vocab, dim, ratio)
    assert rank >= 1
    assert rank * (vocab + dim) <= vocab * dim / ratio
    assert (rank + 1) * (vocab + dim) > vocab * dim / ratio
    # and the ratio it reports back is at least the one asked for
    assert fz.compression_ratio(vocab, dim, rank) >= ratio - 1e-9


@pytest.mark.parametrize("ratio", [1, 0.5, 0, -2])
def test_rank_for_compression_rejects_ratio_not_above_one(ratio):
    with pytest.raises(DistilledEmbeddingError, match="--embedding-compression"):
        fz.rank_for_compression(1000, 64, ratio)


def test_rank_for_compression_rejects_ratio_leaving_no_rank():
    # V=1000, d=64: rank 1 already costs 1,064 parameters, i.e. ratio 60.15 at most
    assert fz.rank_for_compression(1000, 64, 60) == 1
    with pytest.raises(DistilledEmbeddingError, match="--embedding-compression 61"):
        fz.rank_for_compression(1000, 64, 61)


@pytest.mark.parametrize("vocab, dim, rank", [(1000, 64, 15), (32000, 512, 62), (7, 3, 1)])
def test_parameter_counts(vocab, dim, rank):
    assert fz.dense_embedding_params(vocab, dim) == vocab * dim
    assert fz.factorized_embedding_params(vocab, dim, rank) == rank * vocab + rank * dim
    assert fz.compression_ratio(vocab, dim, rank) == pytest.approx(
        vocab * dim / (rank * (vocab + dim))
    )


# ----------------------------------------------------------------------------- flag validation


@pytest.mark.parametrize("rank", [0, -1, -64])
def test_validate_rank_rejects_non_positive(rank):
    with pytest.raises(DistilledEmbeddingError, match=rf"--embedding-rank {rank}\b"):
        fz.validate_rank(1000, 64, rank)


@pytest.mark.parametrize("rank", [64, 65, 100, 61])
def test_validate_rank_rejects_ranks_that_do_not_compress(rank):
    # V=1000, d=64: r·1064 < 64,000 <=> r <= 60; any rank >= d never compresses
    with pytest.raises(DistilledEmbeddingError, match=rf"--embedding-rank {rank}\b.*compress"):
        fz.validate_rank(1000, 64, rank)


def test_validate_rank_accepts_the_largest_compressing_rank():
    assert fz.validate_rank(1000, 64, 60) == 60  # 60·1064 = 63,840 < 64,000
    assert fz.validate_rank(1000, 64, 1) == 1


def test_resolve_rank_from_either_flag():
    assert fz.resolve_rank(1000, 64, rank=20) == 20
    assert fz.resolve_rank(1000, 64, compression=4) == 15
    assert fz.resolve_rank(1000, 64, compression=4.0) == fz.rank_for_compression(1000, 64, 4)


def test_resolve_rank_rejects_both_flags():
    with pytest.raises(DistilledEmbeddingError) as info:
        fz.resolve_rank(1000, 64, rank=8, compression=4)
    assert "--embedding-rank" in str(info.value)
    assert "--embedding-compression" in str(info.value)


def test_resolve_rank_rejects_neither_flag():
    with pytest.raises(DistilledEmbeddingError) as info:
        fz.resolve_rank(1000, 64)
    assert "--embedding-rank" in str(info.value)
    assert "--embedding-compression" in str(info.value)


def test_resolve_rank_validates_an_explicit_rank():
    with pytest.raises(DistilledEmbeddingError, match="--embedding-rank 0"):
        fz.resolve_rank(1000, 64, rank=0)
    with pytest.raises(DistilledEmbeddingError, match="--embedding-rank 64"):
        fz.resolve_rank(1000, 64, rank=64)


def test_unknown_activation_names_the_flag():
    with pytest.raises(DistilledEmbeddingError, match="--embedding-activation"):
        fz.activation_fn("swish")


@pytest.mark.parametrize("name", fz.ACTIVATIONS)
def test_activation_functions(name):
    x = torch.linspace(-3, 3, 13)
    expected = {
        "relu": torch.relu(x),
        "gelu": torch.nn.functional.gelu(x),
        "tanh": torch.tanh(x),
        "linear": x,
    }[name]
    assert torch.equal(fz.activation_fn(name)(x), expected)


# ----------------------------------------------------------------------------- SVD


@pytest.mark.parametrize("rank", [1, 3, 8, 16])
def test_svd_relative_error_matches_truncated_svd_factors(rank):
    target = decaying_spectrum(rows=120, cols=24, seed=rank)
    a, b = fz.truncated_svd_factors(target, rank)
    assert a.shape == (120, rank) and b.shape == (rank, 24)
    assert fz.svd_relative_error(target, rank) == pytest.approx(
        fz.relative_error(target, a @ b), rel=1e-4, abs=1e-6
    )


def test_truncated_svd_factors_are_balanced_and_exact_at_full_rank():
    target = random_low_rank(50, 20, 20, seed=3)
    a, b = fz.truncated_svd_factors(target, 20)
    assert fz.relative_error(target, a @ b) < 1e-5
    # balanced: column k of A and row k of B have the same norm (sqrt of the singular value)
    assert torch.allclose(a.norm(dim=0), b.norm(dim=1), rtol=1e-4)


def test_svd_relative_error_is_eckart_young():
    target = decaying_spectrum(seed=1)
    singular = torch.linalg.svdvals(target)
    for rank in (1, 4, 10):
        expected = math.sqrt((singular[rank:] ** 2).sum() / (singular**2).sum())
        assert fz.svd_relative_error(target, rank) == pytest.approx(expected, rel=1e-5)
    assert fz.svd_relative_error(target, 32) == pytest.approx(0.0, abs=1e-7)


def test_relative_error():
    target = torch.tensor([[3.0, 4.0]])
    assert fz.relative_error(target, target) == 0.0
    assert fz.relative_error(target, torch.zeros(1, 2)) == pytest.approx(1.0)
    assert fz.relative_error(target, torch.tensor([[3.0, 4.5]])) == pytest.approx(0.1)


# --------------------------------------------------------------------- simplex and sign-aware start


@pytest.mark.parametrize("rank", [2, 3, 5, 16, 64])
def test_simplex_vertices(rank):
    g = fz.simplex_vertices(rank)
    tol = 1e-6 * rank  # float32 QR
    assert g.shape == (rank, rank - 1)
    # the r vertices sum to the origin (every column is orthogonal to the all-ones vector)
    assert torch.allclose(g.sum(dim=0), torch.zeros(rank - 1), atol=tol)
    # columns orthonormal
    assert torch.allclose(g.t() @ g, torch.eye(rank - 1), atol=tol)
    # a regular simplex: G·Gᵀ is the projector onto the complement of the ones vector
    assert torch.allclose(g @ g.t(), torch.eye(rank) - 1.0 / rank, atol=tol)


def test_simplex_vertices_rank_one():
    assert fz.simplex_vertices(1).shape == (1, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_aware_factors_cover_a_rank_r_minus_1_matrix(seed):
    rank = 6
    target = random_low_rank(200, 32, rank - 1, seed)
    u, w = fz.sign_aware_factors(target, rank)
    assert u.shape == (200, rank) and w.shape == (rank, 32)
    assert (u > 0).all(), "every entry of U must be strictly positive (no dead ReLU unit)"
    # the product reproduces the matrix (a plain U = U_r·Σ_r start would lose every negative entry)
    assert fz.relative_error(target, torch.relu(u) @ w) < 1e-3
    plain_a, plain_b = fz.truncated_svd_factors(target, rank)
    assert fz.relative_error(target, torch.relu(plain_a) @ plain_b) > 0.1


def test_sign_aware_factors_reproduce_a_rank_r_minus_1_matrix_exactly():
    rank = 6
    for seed in (0, 1, 2):
        target = random_low_rank(200, 32, rank - 1, seed)
        u, w = fz.sign_aware_factors(target, rank)
        product = torch.relu(u) @ w
        svd_a, svd_b = fz.truncated_svd_factors(target, rank - 1)
        float32_floor = fz.relative_error(target, svd_a @ svd_b)  # ~1e-6
        assert fz.relative_error(target, product) <= max(10 * float32_floor, 1e-5)
        assert torch.allclose(product, target, rtol=1e-4, atol=1e-4)
        # and U stays on the scale of the data (sqrt of the top singular value)
        assert u.max() < 10 * torch.linalg.svdvals(target)[0].sqrt()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rank", [2, 4, 8])
def test_sign_aware_factors_never_worse_than_rank_r_minus_1_svd(rank, seed):
    g = torch.Generator().manual_seed(seed)
    general = torch.randn(150, 24, generator=g)
    for target in (general, decaying_spectrum(150, 24, seed=seed)):
        u, w = fz.sign_aware_factors(target, rank)
        assert (u > 0).all()
        error = fz.relative_error(target, torch.relu(u) @ w)
        assert error <= fz.svd_relative_error(target, rank - 1) + 1e-5
        assert error >= fz.svd_relative_error(target, rank) - 1e-5  # Eckart–Young


def test_balance_factors_keeps_relu_product_and_equalises_scales():
    if not hasattr(fz, "balance_factors"):
        pytest.skip("no balance_factors in this version of the package")
    g = torch.Generator().manual_seed(0)
    u = torch.randn(40, 5, generator=g) * 100.0
    w = torch.randn(5, 12, generator=g) * 0.01
    bu, bw = fz.balance_factors(u, w)
    assert torch.allclose(torch.relu(bu) @ bw, torch.relu(u) @ w, rtol=1e-4, atol=1e-6)
    assert torch.allclose(bu.pow(2).mean(0).sqrt(), bw.pow(2).mean(1).sqrt(), rtol=1e-4)


# ----------------------------------------------------------------------------- reconstruction fit


def test_fit_reconstruction_is_between_rank_r_and_rank_r_minus_1_svd():
    target = decaying_spectrum(seed=0)  # RMS ≈ 0.085, so the internal normalisation matters
    rank = 6
    result = fz.fit_reconstruction(target, rank, activation="relu", max_steps=600)
    assert result.relative_error <= fz.svd_relative_error(target, rank - 1) + 1e-6
    assert result.relative_error >= fz.svd_relative_error(target, rank) - 1e-6  # Eckart–Young
    assert result.relative_error <= result.start_relative_error
    assert result.history[0] == (0, result.start_relative_error)
    assert 1 <= result.steps <= 600
    # the returned factors (in the target's scale) reproduce the reported error
    product = torch.relu(result.U) @ result.W
    assert fz.relative_error(target, product) == pytest.approx(result.relative_error, rel=1e-3)
    assert result.U.shape == (300, rank) and result.W.shape == (rank, 32)


def test_fit_reconstruction_linear_reaches_the_svd():
    target = decaying_spectrum(seed=2)
    result = fz.fit_reconstruction(target, 5, activation="linear", max_steps=200)
    assert result.relative_error == pytest.approx(fz.svd_relative_error(target, 5), abs=1e-4)
    assert fz.relative_error(target, result.U @ result.W) == pytest.approx(
        result.relative_error, rel=1e-3
    )


def test_fit_reconstruction_is_scale_equivariant():
    target = decaying_spectrum(seed=3)
    small = fz.fit_reconstruction(target, 4, max_steps=200)
    large = fz.fit_reconstruction(target * 1000.0, 4, max_steps=200)
    assert small.relative_error == pytest.approx(large.relative_error, rel=1e-3)


def test_fit_reconstruction_calls_log_at_each_check():
    seen = []
    result = fz.fit_reconstruction(
        decaying_spectrum(seed=4), 4, max_steps=100, check_interval=25,
        min_relative_improvement=0.0, log=lambda step, error: seen.append((step, error)),
    )
    assert [step for step, _ in seen] == [25, 50, 75, 100][: len(seen)]
    assert seen == result.history[1:]


@pytest.mark.parametrize("activation", ["relu", "linear", "gelu", "tanh"])
def test_fit_reconstruction_factors_reproduce_reported_error(activation):
    target = decaying_spectrum(seed=0)  # RMS ≈ 0.085: any wrong rescaling shows
    result = fz.fit_reconstruction(target, 6, activation=activation, max_steps=300)
    f = fz.activation_fn(activation)
    assert fz.relative_error(target, f(result.U) @ result.W) == pytest.approx(
        result.relative_error, rel=1e-3, abs=1e-5
    )
