"""``fairseq-distilled-emb stats`` (any fairseq checkpoint) and ``rank`` (V, d, ratio -> rank)."""

import argparse
from pathlib import Path
from typing import Dict

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.cli.checkpoint_io import load_checkpoint
from fairseq_distilled_emb.cli.export import count_parameters, tensor_identity


def add_stats_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("checkpoint", type=Path, help="any fairseq checkpoint")


def add_rank_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--vocab", type=int, required=True, help="V: dictionary size")
    parser.add_argument("--dim", type=int, required=True, help="d: embedding dimension")
    parser.add_argument("--compression", type=float, required=True,
                        help="X: dense/factorized embedding parameters")


def embedding_summary(model: Dict) -> Dict:
    """Embedding vs. other parameters, with the rank and ratio of factorized embeddings."""
    embedding_keys = [k for k in model if k.endswith("embed_tokens.weight")
                      or k.endswith("embed_tokens.U") or k.endswith("embed_tokens.W")
                      or ".embed_tokens.tensor_train." in k
                      or k.startswith("decoder.output_projection")]
    embedding = count_parameters({k: model[k] for k in embedding_keys})
    total = count_parameters(model)
    factorized = {tensor_identity(model[k]): model[k] for k in model if k.endswith("embed_tokens.U")}
    summary = {"total_params": total, "embedding_params": embedding,
               "other_params": total - embedding, "rank": None, "compression": None}
    if factorized:
        u = next(iter(factorized.values()))
        vocab, rank = u.shape
        dim = model[next(k for k in model if k.endswith("embed_tokens.W"))].shape[1]
        summary.update(rank=rank, vocab=vocab, dim=dim,
                       compression=factorization.compression_ratio(vocab, dim, rank))
    else:
        weight = next((model[k] for k in model if k.endswith("embed_tokens.weight")), None)
        if weight is not None:
            summary.update(vocab=weight.shape[0], dim=weight.shape[1], compression=1.0)
    return summary


def run_stats(args):
    state = load_checkpoint(args.checkpoint)
    summary = embedding_summary(state["model"])
    summary["size_mb"] = args.checkpoint.stat().st_size / 1e6
    rows = [
        ("checkpoint", str(args.checkpoint)),
        ("embedding params", f"{summary['embedding_params']:,}"),
        ("other params", f"{summary['other_params']:,}"),
        ("total params", f"{summary['total_params']:,}"),
        ("vocabulary × dim", f"{summary.get('vocab', '?')} × {summary.get('dim', '?')}"),
        ("rank", "dense" if summary["rank"] is None else str(summary["rank"])),
        ("embedding compression", "–" if summary["compression"] is None
         else f"{summary['compression']:.2f}x"),
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
