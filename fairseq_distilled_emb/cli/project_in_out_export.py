"""``export --project-in-out``: a language-model student as a stock ``transformer_lm`` that plain
fairseq (and CTranslate2's converter) loads without the plugin, exactly, at the student's size.

fairseq's decoder computes ``x = sqrt(d)·embed_tokens(t)`` then ``project_in_dim(x)`` (Linear
r→d, no bias), and at the output ``project_out_dim`` (Linear d→r, no bias) then the tied
``embed_tokens.weight`` (V×r). With ``embed_tokens = f(U)``, ``project_in_dim.weight = Wᵀ`` and
``project_out_dim.weight = W`` that is f(U)[t]·W in and (h·Wᵀ)·f(U)ᵀ out: the student's own
computation (``--decoder-input-dim r --decoder-output-dim r``). fairseq's translation encoder has
no project-in, so this form exists for language models only.

The stock form no longer needs f(U) ≥ 0, so the factors are re-balanced first
(``orthogonal_factors``): the same product, without the cancellation that breaks any 8-bit
runtime's per-row weight codes (CTranslate2 int8 quantizes both tensors).
"""

from typing import Dict

import torch

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.checkpoints import saved_arch
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import FactorizedEmbedding, saved_compressed_embeddings


#: the stock tensors that hold the factors (``export --fp16`` keeps them fp32, as the factors)
FACTOR_KEYS = frozenset({"decoder.embed_tokens.weight", "decoder.output_projection.weight",
                         "decoder.project_in_dim.weight", "decoder.project_out_dim.weight"})


def orthogonal_factors(codes: torch.Tensor, weight: torch.Tensor):
    """(A, B) with A·B = codes·weight (to fp32 rounding), A = P·√S, B = √S·Qᵀ from the thin SVD
    of the product, computed through the r×r QR of ``codes`` (never a V×d matrix).

    f(U)·W as the task leaves it cancels heavily: ‖f(U)‖·‖W‖ is hundreds of times ‖f(U)·W‖
    (765x for an 8x student of a WikiText-2 d=256 teacher), so per-row int8 codes of both factors
    put a large error into the product; for A and B the ratio is at most √r (5.2 there). Measured
    in docs/export.md (CTranslate2 int8 of that student)."""
    q, r = torch.linalg.qr(codes.double())
    left, singular, right = torch.linalg.svd(r @ weight.double(), full_matrices=False)
    root = singular.sqrt()
    return ((q @ left) * root).to(codes.dtype), (root[:, None] * right).to(weight.dtype)


def factors_as_projections(model: Dict[str, torch.Tensor], model_cfg: dict) -> dict:
    """``model`` with f(U) as the (tied) token embedding and W as the decoder's projections
    (re-balanced as ``orthogonal_factors``: the same product)."""
    arch = saved_arch(model_cfg)
    if not arch.startswith("distilled_transformer_lm"):
        raise DistilledEmbeddingError(
            f"--project-in-out: {arch!r} is not a distilled_transformer_lm* student; a "
            "translation encoder has no project-in (use --dense, or --embedding-bits)")
    kind, modules = saved_compressed_embeddings(model, model_cfg)
    if kind is not FactorizedEmbedding or model_cfg.get("embedding_bits") is not None:
        raise DistilledEmbeddingError(
            "--project-in-out needs a low-rank student trained without --embedding-bits (its f(U) "
            "and W become stock fairseq tensors)")
    if not model_cfg.get("share_decoder_input_output_embed"):
        raise DistilledEmbeddingError(
            "--project-in-out needs a student trained with --share-decoder-input-output-embed "
            "(the output projection goes through the same f(U))")
    tensors = modules["decoder.embed_tokens"]
    activation = factorization.activation_fn(model_cfg.get("embedding_activation") or "relu")
    codes, weight = orthogonal_factors(activation(tensors["U"]), tensors["W"])
    stock = {key: value for key, value in model.items() if not kind.owns_key(key)}
    stock["decoder.embed_tokens.weight"] = codes
    stock["decoder.output_projection.weight"] = codes  # tied: the same tensor, saved once
    stock["decoder.project_in_dim.weight"] = weight.t().contiguous()
    stock["decoder.project_out_dim.weight"] = weight
    model_cfg["decoder_input_dim"] = model_cfg["decoder_output_dim"] = int(weight.shape[0])
    return stock
