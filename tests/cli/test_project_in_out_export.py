"""``export --project-in-out``'s re-balancing of the factors (the end-to-end export is tested with
the LM task, tests/tasks/test_language_modeling_reconstruction_init.py)."""

import torch

from fairseq_distilled_emb.cli.project_in_out_export import orthogonal_factors


def test_orthogonal_factors_keep_the_product_and_remove_the_cancellation():
    generator = torch.Generator().manual_seed(0)
    # as in a trained ReLU factorization: every row of f(U) shares a large positive part, which
    # W's components cancel (its columns sum to ~0), so the product is small against the factors
    codes = 20 + torch.relu(torch.randn(500, 12, generator=generator))
    weight = torch.randn(12, 48, generator=generator)
    weight -= weight.mean(dim=0, keepdim=True)
    product = codes.double() @ weight.double()
    left, right = orthogonal_factors(codes, weight)
    assert left.dtype == right.dtype == torch.float32
    assert left.shape == (500, 12) and right.shape == (12, 48)
    assert torch.allclose(left.double() @ right.double(), product, rtol=0,
                          atol=1e-5 * product.abs().max().item())
    # ‖A‖·‖B‖ / ‖A·B‖ = Σs / √Σs² ≤ √r for the balanced SVD form; the input is far above it
    def cancellation(a, b):
        return (a.norm() * b.norm() / (a.double() @ b.double()).norm()).item()

    assert cancellation(codes, weight) > 10
    assert cancellation(left, right) <= 12 ** 0.5 + 1e-4
    # the two factors carry equal shares: ‖A‖_F = ‖B‖_F (both √Σs)
    assert torch.isclose(left.norm(), right.norm(), rtol=1e-5)
