#!/usr/bin/env python
"""What a rank-r tied embedding costs a language model before any training: the recipe's teacher
with its E (input embedding and tied softmax) replaced by E's best rank-r approximation (truncated
SVD), scored by the recipe's own ``fairseq-eval-lm`` on valid.

    python -m benchmarks.rank_ceiling --results results/lm-wikitext2-cpu --profile wikitext2-cpu \\
        --ranks 62 31 15

Why: a Distilled Embedding student at 8x has rank r = V·d / (8·(V+d)) (31 at WikiText-2's
V=33,280, d=256), and through the tied softmax its logits have rank ≤ r. This measures that
bottleneck on its own, with the teacher's body untouched: the students' fine-tuning starts there
(their reconstruction init is within 0.2 % of the rank-r SVD in relative error). The files are
stock fairseq checkpoints holding the V×d product, not its factors: a diagnostic, not a model to
ship. They go under ``<results>/rank-ceiling/``; each finished rank is reused on a re-run.

``--dense-rows K`` measures the ``dense-head`` kind's ceiling instead: the first K rows (the
specials and the most frequent words) keep the teacher's own rows and only the rest is replaced by
its rank-r approximation (the ranks are then the tail's; ``--embedding-compression`` of a
dense-head student gives K·d + r·(V−K+d) parameters).
"""

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import load_recipe
from examples.multi30k.commands import log_like_fairseq_cli
from fairseq_distilled_emb.checkpoints import load_checkpoint, save_checkpoint
from fairseq_distilled_emb.factorization import relative_error, truncated_svd_factors

#: the tied embedding's two names in a stock transformer_lm checkpoint (one tensor)
TIED_KEYS = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")


def with_rank(teacher: Path, rank: int, out: Path, dense_rows: int = 0) -> float:
    """Write the teacher with its tied E replaced by the best rank-``rank`` approximation (the
    product of the students' SVD factors) to ``out``, its first ``dense_rows`` rows kept as they
    are; return its relative Frobenius error."""
    state = load_checkpoint(teacher)
    matrix = state["model"][TIED_KEYS[0]]
    left, right = truncated_svd_factors(matrix[dense_rows:], rank)
    approximation = torch.cat([matrix[:dense_rows], (left @ right).to(matrix.dtype)])
    for key in TIED_KEYS:
        if key in state["model"]:
            state["model"][key] = approximation
    state.pop("last_optimizer_state", None)
    save_checkpoint(state, out, force=True)
    return relative_error(matrix, approximation)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True,
                        help="a finished examples/language_model/run.py results directory")
    parser.add_argument("--profile", default="wikitext2-cpu",
                        help="the profile the results directory was made with")
    parser.add_argument("--ranks", type=int, nargs="+", required=True,
                        help="the ranks r of the approximations scored")
    parser.add_argument("--dense-rows", type=int, default=0, help="keep the teacher's first K "
                        "rows (the dense-head kind's head) and approximate only the rest")
    parser.add_argument("--subset", default="valid", help="the split scored (choices are made "
                        "on valid)")
    args = parser.parse_args()
    log_like_fairseq_cli()
    recipe = load_recipe("language_model")
    args.use_gpu, args.max_tokens, args.student_updates = False, None, None
    profile = recipe.with_overrides(recipe.PROFILES[args.profile], args)
    data_bin, teacher = args.results / "data-bin", args.results / "teacher" / "checkpoint_best.pt"
    rows = {}
    for rank in args.ranks:
        name = f"head{args.dense_rows}_rank{rank}" if args.dense_rows else f"rank{rank}"
        out_dir = args.results / "rank-ceiling" / name
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = out_dir / "checkpoint.pt"
        error_file = out_dir / "relative_error.json"
        if not error_file.exists():
            error = with_rank(teacher, rank, checkpoint, args.dense_rows)
            error_file.write_text(json.dumps({"relative_error": error}))
        score = recipe.evaluate(data_bin, checkpoint, out_dir, args.results, args, profile,
                                f"rank_ceiling_{name}", subset=args.subset)
        rows[rank] = {**json.loads(error_file.read_text()), **score}
        print(f"{name}: relative error {rows[rank]['relative_error']:.4f}, {args.subset} "
              f"perplexity {score['perplexity']:.2f}", flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
