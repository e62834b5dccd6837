"""Where a stopped training's valid curve was heading: a fit of ``loss = a + b·u^(-c)`` to the
valid losses fairseq-train logged (base 2), so that a baseline stopped before its early stop is
reported with what more of the same training could give it, not only where it stood.

    python -m benchmarks.valid_curve_limit results/lm-wikitext2-cpu/logs/adaptive_16x.train.log \
        --from-updates 1024 --at 9560

The fit: for each exponent c on a fine grid, a and b by linear least squares; the c with the
smallest squared error wins. ``a`` is the limit at infinitely many updates. Perplexities are in the
log's own count (2^loss: no context window), so compare them with the same log's figures, or scale
them by a checkpoint's ``fairseq-eval-lm`` perplexity over its logged one.
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

VALID = re.compile(r"valid on 'valid' subset \| loss ([\d.]+) \|.*?\| num_updates (\d+)")
EXPONENTS = np.arange(0.05, 3.0, 0.001)


def valid_curve(log_texts: Sequence[str]) -> List[Tuple[int, float]]:
    """(updates, valid loss) in update order; a validation logged twice (a log appended by a
    resumed run) counts once, its last value."""
    points = {}
    for text in log_texts:
        for loss, updates in VALID.findall(text):
            points[int(updates)] = float(loss)
    return sorted(points.items())


def fit_power_law(updates: np.ndarray, losses: np.ndarray) -> Dict[str, float]:
    """a, b, c of ``a + b·u^(-c)`` by least squares, and the root-mean-square residual."""
    if len(updates) < 4:
        raise ValueError(f"{len(updates)} validations to fit; at least 4 are needed")
    best = None
    for exponent in EXPONENTS:
        design = np.stack([np.ones_like(updates), updates ** -exponent], axis=1)
        (limit, scale), *_ = np.linalg.lstsq(design, losses, rcond=None)
        error = float(np.sum((design @ np.array([limit, scale]) - losses) ** 2))
        if best is None or error < best[0]:
            best = (error, float(limit), float(scale), float(exponent))
    error, limit, scale, exponent = best
    return {"a": limit, "b": scale, "c": exponent, "rms": (error / len(updates)) ** 0.5}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="fairseq-train logs of one training, "
                        "in order (a resumed training's logs, or one log appended by each run)")
    parser.add_argument("--from-updates", type=int, default=1024,
                        help="fit the validations at or after this many updates (warm-up and the "
                        "first steep fall follow another law)")
    parser.add_argument("--at", type=int, nargs="*", default=[],
                        help="also report the fitted perplexity at these update counts")
    args = parser.parse_args(argv)
    missing = [str(log) for log in args.logs if not log.is_file()]
    if missing:
        sys.exit(f"error: log not found: {', '.join(missing)}; pass fairseq-train's log files")
    curve = [(u, loss) for u, loss in valid_curve([log.read_text() for log in args.logs])
             if u >= args.from_updates]
    if len(curve) < 4:
        sys.exit(f"error: {len(curve)} validations at or after --from-updates "
                 f"{args.from_updates}; at least 4 are needed: lower --from-updates")
    updates, losses = (np.array(column, dtype=np.float64) for column in zip(*curve))
    fit = fit_power_law(updates, losses)
    report = {"fit": fit, "validations": len(curve), "last": {"updates": curve[-1][0],
              "loss": curve[-1][1], "ppl": round(2 ** curve[-1][1], 2)},
              "best": {"loss": float(losses.min()), "ppl": round(2 ** float(losses.min()), 2)},
              "ppl_at": {str(u): round(2 ** (fit["a"] + fit["b"] * u ** -fit["c"]), 2)
                         for u in args.at},
              "ppl_limit": round(2 ** fit["a"], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
