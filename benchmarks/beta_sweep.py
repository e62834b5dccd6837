#!/usr/bin/env python
"""Choose the default β (``--embedding-distill-weight``) on Multi30k's validation set.

Reuses a finished ``examples/multi30k/run.py`` results directory (its data-bin and teacher), trains
the 8x Distilled Embedding student once per β with the profile's student budget, and scores each on
``valid`` (never on test) with fairseq-generate + sacreBLEU. Resumable like the recipe.

    python benchmarks/beta_sweep.py --results results/multi30k-demo --profile demo --betas 0 0.1 1 10
"""

import argparse
import json
from pathlib import Path

from common import load_recipe


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.1, 1.0, 10.0])
    parser.add_argument("--student-updates", type=int)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    recipe = load_recipe()
    args.use_gpu, args.fp16, args.max_tokens = args.device == "gpu", True, None
    profile = recipe.with_overrides(recipe.PROFILES[args.profile], args)
    data_bin, teacher = args.results / "data-bin", args.results / "teacher" / "checkpoint_best.pt"
    scores = {}
    for beta in args.betas:
        name = f"beta_{beta:g}"
        save_dir = args.results / "beta_sweep" / name
        flags = recipe.student_flags("distilled_8x", profile, args, teacher) + [
            "--embedding-distill-weight", str(beta)]
        recipe.train(data_bin, save_dir, flags, name, args.results)
        scores[beta] = recipe.evaluate(data_bin, save_dir / "checkpoint_best.pt", save_dir,
                                       args.results, args, profile, name, subset="valid")["bleu"]
    best = max(scores, key=scores.get)
    print("| β | valid BLEU |\n|---|---|")
    print("\n".join(f"| {beta:g} | {bleu:.2f} |" for beta, bleu in scores.items()))
    print(f"best β on valid: {best:g}")
    (args.results / "beta_sweep" / "summary.json").write_text(
        json.dumps({"valid_bleu": {str(k): v for k, v in scores.items()}, "best": best}, indent=2))


if __name__ == "__main__":
    main()
