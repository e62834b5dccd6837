"""``fairseq-distilled-emb stats`` (any fairseq checkpoint) and ``rank`` (V, d, ratio -> rank)."""

import argparse
from pathlib import Path
from typing import Dict, List

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.checkpoints import adaptive_input_bands, load_checkpoint
from fairseq_distilled_emb.cli.export import count_bytes, count_parameters, to_plain
from fairseq_distilled_emb.modules import compressed_keys, saved_compressed_embeddings

#: the modules of an adaptive-input LM's embedding: its input bands, and the adaptive softmax tied
#: to them or the dense output layer of a model without one
ADAPTIVE_MODULES = ("decoder.embed_tokens.", "decoder.adaptive_softmax.",
                    "decoder.output_projection.")


def add_stats_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("checkpoint", type=Path, help="any fairseq checkpoint")


def add_rank_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--vocab", type=int, required=True, help="V: dictionary size")
    parser.add_argument("--dim", type=int, required=True, help="d: embedding dimension")
    parser.add_argument("--compression", type=float, required=True,
                        help="X: dense/factorized embedding parameters")


def embedding_summary(model: Dict, model_cfg) -> Dict:
    """Embedding vs. other parameters, with the size and ratio of a compressed embedding."""
    bands = adaptive_input_bands(model)
    if bands:
        return adaptive_input_summary(model, bands)
    compressed = compressed_keys(model)
    embedding_keys = [k for k in model if k.endswith("embed_tokens.weight") or k in compressed
                      or k.startswith("decoder.output_projection")]
    embedding = count_parameters({k: model[k] for k in embedding_keys})
    total = count_parameters(model)
    summary = {"total_params": total, "embedding_params": embedding,
               "other_params": total - embedding, "size": None, "compression": None,
               "embedding_bytes": count_bytes({k: model[k] for k in embedding_keys}),
               "tensor_bytes": count_bytes(model)}
    kind, modules = saved_compressed_embeddings(model, model_cfg) if compressed else (None, {})
    if modules:
        summary.update(kind.saved_size(next(iter(modules.values())), model_cfg))
        if summary.get("vocab") and summary.get("dim"):
            dense = factorization.dense_embedding_params(summary["vocab"], summary["dim"])
            stored = count_parameters({k: model[k] for k in compressed})
            if kind.integer_codes:  # the ratio is of bytes against fp32 E
                dense, stored = 4 * dense, summary["embedding_bytes"]
            summary["compression"] = dense / stored
    else:
        weight = next((model[k] for k in model if k.endswith("embed_tokens.weight")), None)
        if weight is not None:
            summary.update(vocab=weight.shape[0], dim=weight.shape[1], compression=1.0)
    if summary.get("vocab") and summary.get("dim"):  # the reference every byte ratio is against
        summary["fp32_embedding_bytes"] = 4 * factorization.dense_embedding_params(
            summary["vocab"], summary["dim"])
    return summary


def adaptive_input_summary(model: Dict, bands: List[str]) -> Dict:
    """fairseq's adaptive input and the adaptive softmax tied to it, as the embedding: its bands'
    tables (``bands``: their prefixes; float or integer codes), their projections and the head's
    cluster vectors, counted against the V×d fp32 E a dense tied model of the same width would
    store."""
    embedding_keys = [k for k in model if k.startswith(ADAPTIVE_MODULES)
                      and not k.endswith(("_float_tensor", ".version"))]
    shapes = [tuple(int(v) for v in model[f"{prefix}.code_shape"][:2])
              if f"{prefix}.code_shape" in model else tuple(model[f"{prefix}.weight"].shape)
              for prefix in bands]
    bits = {int(model[f"{prefix}.code_shape"][2]) for prefix in bands
            if f"{prefix}.code_shape" in model}
    vocab = sum(rows for rows, _ in shapes)
    dim = model[f"{bands[0][:-len('.0')]}.1.weight"].shape[0]  # band 0's projection: width → d
    embedding = count_parameters({k: model[k] for k in embedding_keys})
    total = count_parameters(model)
    stored = count_bytes({k: model[k] for k in embedding_keys})
    dense = factorization.dense_embedding_params(vocab, dim)
    # float bands: parameters against V·d, as the other float kinds; codes: bytes against fp32 E
    compression = 4 * dense / stored if bits else dense / embedding
    size = (f"adaptive input, {len(bands)} bands of {'/'.join(str(rows) for rows, _ in shapes)} "
            f"words, widths {'/'.join(str(width) for _, width in shapes)}"
            + (f", in int{min(bits)} codes" if bits else ""))
    return {"total_params": total, "embedding_params": embedding, "other_params": total - embedding,
            "size": size, "vocab": vocab, "dim": dim, "embedding_bytes": stored,
            "compression": compression, "fp32_embedding_bytes": 4 * dense,
            "tensor_bytes": count_bytes(model)}


def model_config(state) -> Dict:
    """The saved model configuration as a plain dict (``cfg.model``, or an old ``args``)."""
    if state.get("cfg") is not None:
        return to_plain(state["cfg"]).get("model") or {}
    return dict(vars(state["args"]))


def run_stats(args):
    state = load_checkpoint(args.checkpoint)
    summary = embedding_summary(state["model"], model_config(state))
    summary["size_mb"] = args.checkpoint.stat().st_size / 1e6
    embedding_bytes = f"{summary['embedding_bytes']:,}"
    if summary.get("fp32_embedding_bytes"):
        fp32 = summary["fp32_embedding_bytes"]
        embedding_bytes += (f" ({fp32 / summary['embedding_bytes']:.1f}x fewer than fp32 E, "
                            f"{fp32 / 2 / summary['embedding_bytes']:.1f}x fewer than fp16 E)")
    rows = [
        ("checkpoint", str(args.checkpoint)),
        ("embedding params", f"{summary['embedding_params']:,}"),
        ("other params", f"{summary['other_params']:,}"),
        ("total params", f"{summary['total_params']:,}"),
        ("vocabulary × dim", f"{summary.get('vocab') or '?'} × {summary.get('dim') or '?'}"),
        ("compressed", "no (dense)" if summary["size"] is None else summary["size"]),
        ("embedding compression", "–" if summary["compression"] is None
         else f"{summary['compression']:.2f}x"),
        ("embedding bytes", embedding_bytes),
        ("tensor bytes", f"{summary['tensor_bytes']:,} (every tensor as stored, tied ones once)"),
        ("size", f"{summary['size_mb']:.2f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return summary


def run_rank(args):
    rank = factorization.rank_for_compression(args.vocab, args.dim, args.compression)
    factorized = factorization.factorized_embedding_params(args.vocab, args.dim, rank)
    dense = factorization.dense_embedding_params(args.vocab, args.dim)
    print(f"rank {rank}: {factorized:,} factorized vs {dense:,} dense embedding parameters "
          f"({dense / factorized:.2f}x); pass --embedding-rank {rank} or "
          f"--embedding-compression {args.compression:g}")
    return rank
