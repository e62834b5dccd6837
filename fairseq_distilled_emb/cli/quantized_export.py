"""``export --embedding-bits B``: a saved model state's embedding replaced by integer codes.

A dense model's E becomes per-row B-bit codes (post-training quantization: the baseline a user gets
without training); a Distilled Embedding student's f(U) becomes per-row codes after its components
are rescaled to one range, with W kept fp32 (:meth:`QuantizedEmbedding.from_factors`; fp16 with
``--embedding-w-fp16``), the rarest rows optionally in narrower codes (``--embedding-tail-bits``).
The model config then names the ``quantized`` kind, so stock ``fairseq-generate --user-dir`` builds a
:class:`QuantizedEmbedding` that keeps the codes as integers in memory.
"""

from typing import Dict, List, Optional, Tuple

import torch

from fairseq_distilled_emb.checkpoints import (
    adaptive_input_bands,
    saved_arch,
    set_saved_arch,
    tensor_identity,
)
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.models.transformer_lm_int_codes import ARCH as INT_CODES_LM
from fairseq_distilled_emb.modules import (
    DenseHeadEmbedding,
    FactorizedEmbedding,
    QuantizedDenseHeadEmbedding,
    QuantizedEmbedding,
    compressed_keys,
    saved_compressed_embeddings,
)
from fairseq_distilled_emb.modules.int8_linear import quantize_weight
from fairseq_distilled_emb.quantization import RESCALABLE_ACTIVATIONS, check_bits

TIED_OUTPUT = "decoder.output_projection"


def quantize_embeddings(model: Dict[str, torch.Tensor], model_cfg: dict, bits: int,
                        scale_format: Optional[str] = None, tail_bits: Optional[int] = None,
                        head_rows: Optional[int] = None, w_fp16: bool = False) -> dict:
    """``model`` with its (dense or low-rank) embedding stored as ``bits``-bit codes; the model
    config is rewritten to the ``quantized`` kind of the same architecture family. The scales are
    stored in ``scale_format``, by default the one quantization-aware fine-tuning used (fp16
    when there was none). ``tail_bits``/``head_rows``: the rows from ``head_rows`` on in
    narrower codes (see :mod:`..modules.quantized_embedding`); ``w_fp16``: W stored in fp16."""
    check_bits(bits)
    scale_format = scale_format or model_cfg.get("embedding_scale_format") or "fp16"
    options = {"scale_format": scale_format, "tail_bits": tail_bits, "head_rows": head_rows}
    bands = adaptive_input_bands(model)
    if bands:
        return quantize_adaptive_input(model, model_cfg, bands, bits, options, w_fp16)
    if compressed_keys(model):
        groups, rank = _factor_groups(model, model_cfg, bits, options)
    else:
        if w_fp16:
            raise DistilledEmbeddingError(
                "--embedding-w-fp16: this checkpoint's embedding is dense (no W); drop the flag")
        groups, rank = _dense_groups(model, bits, options), None
    quantized = dict(model)
    for source_keys, prefixes, module in groups:
        for key in source_keys:
            quantized.pop(key)
        tensors = module.state_dict()
        if w_fp16:  # the low-rank source's W (a dense-head's: its tail's)
            tensors = {name: value.half() if name.endswith("code_projection") else value
                       for name, value in tensors.items()}
        for prefix in prefixes:
            quantized.update({f"{prefix}.{name}": value for name, value in tensors.items()})
    _quantized_model_config(model_cfg, bits, rank, options, groups[0][2].kind)
    return quantized


def _factor_groups(model, model_cfg, bits, options) -> Tuple[List, int]:
    """One QuantizedEmbedding per distinct saved factorization (shared ones once)."""
    kind, modules = saved_compressed_embeddings(model, model_cfg)
    if kind in (QuantizedEmbedding, QuantizedDenseHeadEmbedding):
        bits_before = int(next(iter(modules.values()))[
            "code_shape" if kind is QuantizedEmbedding else "head.code_shape"][2])
        raise DistilledEmbeddingError(
            f"--embedding-bits: this checkpoint's embedding is already quantized (int{bits_before} "
            "codes); quantize the training checkpoint it was exported from instead")
    if kind not in (FactorizedEmbedding, DenseHeadEmbedding):
        raise DistilledEmbeddingError(
            f"--embedding-bits: a {kind.kind} embedding cannot be quantized; it works on a dense "
            "embedding and on a low-rank (Distilled Embedding) or dense-head one")
    if kind is DenseHeadEmbedding and (options["tail_bits"], options["head_rows"]) != (None, None):
        flag = "--embedding-tail-bits" if options["tail_bits"] is not None else (
            "--embedding-head-rows")
        raise DistilledEmbeddingError(
            f"{flag}: a dense-head embedding's split is already its own (dense head, low-rank "
            "tail), both stored in --embedding-bits codes; drop --embedding-tail-bits and "
            "--embedding-head-rows")
    activation = model_cfg.get("embedding_activation") or "relu"
    if activation not in RESCALABLE_ACTIVATIONS:
        raise DistilledEmbeddingError(
            f"--embedding-bits: the factors were trained with --embedding-activation {activation}"
            "; quantizing f(U) needs relu or linear (its per-component rescaling needs "
            "f(c·u) = c·f(u))")
    factors = "U" if kind is FactorizedEmbedding else "tail.U"
    by_tensors = {}  # a shared factorization is saved under each module that holds it
    for prefix, tensors in modules.items():
        by_tensors.setdefault(tensor_identity(tensors[factors]), (tensors, []))[1].append(prefix)
    groups = []
    for tensors, prefixes in by_tensors.values():
        with torch.no_grad():
            module = (_quantized_factors(tensors, model_cfg, bits, options)
                      if kind is FactorizedEmbedding
                      else _quantized_dense_head(tensors, model_cfg, bits, options))
        keys = [f"{prefix}.{name}" for prefix in prefixes for name in tensors]
        groups.append((keys, prefixes, module))
    # the model config records one --embedding-rank (and a dense-head's --embedding-dense-rows)
    # for all; the vocabulary sizes come from the dictionaries, so those may differ
    recorded = {(module.rank, module.head_rows if kind is DenseHeadEmbedding else None)
                for _, _, module in groups}
    if len(recorded) > 1:
        shapes = sorted({module.extra_repr() for _, _, module in groups})
        raise DistilledEmbeddingError(
            "--embedding-bits: this model's embeddings are factorized at different sizes ("
            f"{'; '.join(shapes)}), and a quantized model records one; train the student with "
            "--embedding-rank (the same for every embedding) or --share-all-embeddings")
    return groups, module.rank


def _quantized_factors(tensors, model_cfg, bits, options) -> QuantizedEmbedding:
    source = FactorizedEmbedding.from_saved(tensors, model_cfg)
    return QuantizedEmbedding.from_factors(source.activated_codes(), source.W, bits, **options)


def _quantized_dense_head(tensors, model_cfg, bits, options) -> QuantizedDenseHeadEmbedding:
    """The head's rows as a dense E's codes (its padding row was kept at zero in training), the
    tail's f(U) as a low-rank student's."""
    tail = FactorizedEmbedding.from_saved({"U": tensors["tail.U"], "W": tensors["tail.W"]},
                                          model_cfg)
    return QuantizedDenseHeadEmbedding.from_dense_head(
        tensors["head"].float(), tail.activated_codes(), tail.W, bits,
        scale_format=options["scale_format"])


def _dense_groups(model, bits, options) -> List:
    """One QuantizedEmbedding per distinct dense token embedding; the decoder's output layer is
    quantized with it where it is tied to it (the same tensor)."""
    output = model.get(f"{TIED_OUTPUT}.weight")
    by_tensor = {}
    for key, value in model.items():
        if key.endswith("embed_tokens.weight"):
            by_tensor.setdefault(tensor_identity(value), (value, []))[1].append(key)
    if not by_tensor:
        raise DistilledEmbeddingError(
            "--embedding-bits: the checkpoint has no token embedding (embed_tokens.weight): it is "
            "not a transformer translation/language model")
    groups = []
    for matrix, keys in by_tensor.values():
        prefixes = [key[: -len(".weight")] for key in keys]
        if output is not None and tensor_identity(output) == tensor_identity(matrix):
            keys.append(f"{TIED_OUTPUT}.weight")
            prefixes.append(f"{TIED_OUTPUT}.embedding")
        groups.append((keys, prefixes,
                       QuantizedEmbedding.from_dense(matrix, bits, **options)))
    return groups


def quantize_adaptive_input(model, model_cfg, bands, bits, options, w_fp16) -> dict:
    """An adaptive-input LM with each band's table (``bands``: their prefixes) as per-row codes,
    stored once: the adaptive softmax's copies of the tables it ties to (its head and tail word
    projections) are dropped and re-tied on load by ``transformer_lm_int_codes``; the band
    projections stay float."""
    if any(QuantizedEmbedding.owns_key(key) for key in model):
        raise DistilledEmbeddingError(
            "--embedding-bits: this adaptive-input checkpoint's bands are already integer codes; "
            "quantize the training checkpoint it was exported from instead")
    for flag, value in (("--embedding-tail-bits", options["tail_bits"]),
                        ("--embedding-w-fp16", w_fp16 or None)):
        if value is not None:
            raise DistilledEmbeddingError(
                f"{flag}: this checkpoint has adaptive input (fairseq's --adaptive-input), whose "
                "bands already give rarer words narrower rows and have no W; drop the flag")
    quantized = dict(model)
    for prefix in bands:
        table = model[f"{prefix}.weight"]
        for key in [key for key, value in model.items()
                    if tensor_identity(value) == tensor_identity(table)]:
            quantized.pop(key)
        module = QuantizedEmbedding.from_dense(table, bits, **options)
        quantized.update({f"{prefix}.{name}": value for name, value in module.state_dict().items()})
    set_saved_arch(model_cfg, INT_CODES_LM)
    return quantized


def _quantized_model_config(model_cfg: dict, bits: int, rank, options: dict,
                            kind: str = "quantized"):
    """The ``distilled_*`` architecture of the model's family, with the ``quantized`` kind (a
    dense-head student's: ``quantized-dense-head``, its ``--embedding-dense-rows`` kept)."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    arch = saved_arch(model_cfg)
    if not arch.startswith("distilled_"):
        if arch.startswith("transformer_lm"):
            # every field is saved; fairseq re-runs a named LM arch's function on load, which
            # would refill unset fields (see export.dense_model_config)
            arch = "distilled_transformer_lm"
        elif f"distilled_{arch}" in ARCH_MODEL_REGISTRY:
            arch = f"distilled_{arch}"
        else:
            arch = "distilled_transformer"
    set_saved_arch(model_cfg, arch)
    model_cfg.update(embedding_factorization=kind, embedding_bits=bits,
                     embedding_rank=rank, embedding_compression=None,
                     embedding_activation="relu", embedding_bits_from_update=0,
                     embedding_scale_format=options["scale_format"],
                     embedding_tail_bits=options["tail_bits"],
                     embedding_head_rows=options["head_rows"])


def int8_body(model: Dict[str, torch.Tensor], model_cfg: dict) -> dict:
    """``model`` with every Linear weight of the encoder/decoder layers (the 2-D ``.weight``
    tensors under ``.layers.``) stored as int8 codes and per-row scales (:class:`Int8Linear`)."""
    arch = saved_arch(model_cfg)
    if arch == INT_CODES_LM or adaptive_input_bands(model):
        raise DistilledEmbeddingError(
            "--int8-body: an adaptive-input language model's layers stay float (the plugin's int8 "
            "layers are built by its distilled_* architectures only); drop --int8-body")
    if not arch.startswith("distilled_"):
        raise DistilledEmbeddingError(
            f"--int8-body: {arch!r} is a stock architecture, which has no int8 layers; add "
            "--embedding-bits (a dense teacher's E then becomes codes too) or export a "
            "distilled_* student")
    converted = {}
    for key, value in model.items():
        if ".layers." in key and key.endswith(".weight") and value.dim() == 2:
            codes, scales = quantize_weight(value)
            prefix = key[: -len(".weight")]
            converted[f"{prefix}.weight_codes"], converted[f"{prefix}.weight_scales"] = codes, scales
        else:
            converted[key] = value
    model_cfg["int8_body"] = True
    return converted
