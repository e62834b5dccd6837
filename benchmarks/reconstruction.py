#!/usr/bin/env python
"""Reconstruction-init speed and quality (issue 4).

Speed: V=8,000, d=512, r=64 on the CPU (target ≤ 30 s on 2 cores), on a matrix with a trained
embedding's decaying spectrum. Quality: on a real trained teacher embedding (``--teacher``), the
relative Frobenius error ‖f(U)W − E‖/‖E‖ of the reconstruction next to the rank-r and rank-(r−1)
truncated SVD errors (f(U)W has rank ≤ r, so nothing beats the rank-r SVD; ReLU with r columns can
represent any rank-(r−1) matrix, so the reconstruction must be ≤ the rank-(r−1) error).

    python -m benchmarks.reconstruction --teacher results/multi30k-demo/teacher/checkpoint_best.pt
"""

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import REPO
from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.checkpoints import load_checkpoint


def synthetic_trained_like(vocab, dim, seed=0):
    """Gaussian rows with a power-law spectrum and fairseq's N(0, 1/d) scale."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(vocab, dim, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
    spectrum = torch.arange(1, dim + 1, dtype=torch.float).pow(-0.7)
    matrix = (left * spectrum) @ right.t()
    return matrix * (dim ** -0.5) / matrix.pow(2).mean().sqrt()


def measure(embedding, rank, activation="relu", **fit_options):
    started = time.perf_counter()
    result = factorization.fit_reconstruction(embedding, rank, activation=activation, **fit_options)
    return {
        "V": embedding.shape[0], "d": embedding.shape[1], "rank": rank, "activation": activation,
        "seconds": round(time.perf_counter() - started, 2), "steps": result.steps,
        "start_error": round(result.start_relative_error, 5),
        "reconstruction_error": round(result.relative_error, 5),
        "svd_error_rank_r": round(factorization.svd_relative_error(embedding, rank), 5),
        "svd_error_rank_r_minus_1": round(factorization.svd_relative_error(embedding, rank - 1), 5),
    }


def teacher_embedding(path):
    """The teacher's E, read with the plugin's safe loader (never full unpickling)."""
    state = load_checkpoint(path, label=f"--teacher {path}")
    return state["model"]["decoder.embed_tokens.weight"].float()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path,
                        default=REPO / "results" / "multi30k-demo" / "teacher" / "checkpoint_best.pt",
                        help="the trained teacher whose embedding is reconstructed")
    parser.add_argument("--ratios", type=float, nargs="*", default=[4, 8, 16],
                        help="compression ratios of E measured")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    rows = [dict(measure(synthetic_trained_like(8000, 512), 64), matrix="synthetic 8000×512")]
    if args.teacher.exists():
        embedding = teacher_embedding(args.teacher)
        vocab, dim = embedding.shape
        for ratio in args.ratios:
            rank = factorization.rank_for_compression(vocab, dim, ratio)
            for activation in ("relu", "linear"):
                rows.append(dict(measure(embedding, rank, activation),
                                 matrix=f"teacher {args.teacher.parent.name} {ratio:g}x"))
    else:
        print(f"{args.teacher} not found: only the synthetic timing row (run make demo first)")
    keys = ["matrix", "V", "d", "rank", "activation", "seconds", "steps", "start_error",
            "reconstruction_error", "svd_error_rank_r", "svd_error_rank_r_minus_1"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in keys) + " |")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
