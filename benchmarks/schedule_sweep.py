#!/usr/bin/env python
"""Choose the students' fine-tuning schedule on Multi30k's validation set (never on test).

Reuses a finished ``examples/<recipe>/run.py`` results directory (``--recipe multi30k``, the
default, scores valid BLEU; ``--recipe language_model`` valid perplexity) (its data-bin, teacher and, for
``--train-data teacher|both``, its sequence-KD data) and trains one student row per point of the
grid given on the command line (the cartesian product of every list), each with the recipe's own
stages: the profile's student flags with the point's schedule merged over them. Every point is
scored on ``valid`` with the recipe's own evaluation, and its best validation loss; each finished
point is skipped on a re-run, so the sweep resumes where it stopped and grows by adding values. The
table of every point found under ``<results>/sweep`` is rewritten after each point (sorted by valid
BLEU).

    python -m benchmarks.schedule_sweep --results results/multi30k-demo --profile demo \\
        --lr 5e-4 1e-3 2e-3 --scheduler inverse_sqrt fixed cosine --updates 250
"""

import argparse
import itertools
import json
from pathlib import Path

from benchmarks.common import load_recipe
from examples.multi30k.commands import log_like_fairseq_cli, merge_flags, without_flags

SCHEDULERS = ("inverse_sqrt", "fixed", "cosine")


def point_flags(profile_flags, lr, scheduler, warmup, updates, beta, embedding_first,
                kd_alpha=None, kd_temperature=2.0):
    """The row's flags with the point's schedule merged over them. Only cosine takes
    ``--min-lr``: a profile's cosine floor is dropped when the point uses another scheduler
    (fairseq's inverse_sqrt and fixed reject the flag). ``kd_alpha`` None keeps the row's own
    output distillation (off, but for distilled_output_kd_8x)."""
    flags = merge_flags(profile_flags, schedule_flags(lr, scheduler, warmup, updates, beta,
                                                      embedding_first))
    if kd_alpha is not None:
        flags = merge_flags(flags, ["--kd-alpha", f"{kd_alpha:g}",
                                    "--kd-temperature", f"{kd_temperature:g}"])
    return flags if scheduler == "cosine" else without_flags(flags, "--min-lr")


def schedule_flags(lr, scheduler, warmup, updates, beta, embedding_first):
    """The point's flags; they replace the profile's own (``merge_flags``)."""
    flags = ["--lr", f"{lr:g}", "--lr-scheduler", scheduler, "--warmup-updates", str(warmup),
             "--max-update", str(updates), "--embedding-distill-weight", f"{beta:g}",
             "--embedding-first-updates", str(embedding_first)]
    if scheduler == "cosine":  # one half-period over the budget, down to 1 % of the peak
        flags += ["--min-lr", f"{lr / 100:g}"]
    return flags


def point_name(row, lr, scheduler, warmup, updates, beta, embedding_first, data, kd_alpha=None,
               kd_temperature=2.0):
    """Unique per point; a point without a --kd-alpha axis keeps the name it had before the axis
    existed, so earlier sweeps still resume."""
    kd = "" if kd_alpha is None else f"_kd{kd_alpha:g}_T{kd_temperature:g}"
    return (f"{row}_lr{lr:g}_{scheduler}_w{warmup}_u{updates}_b{beta:g}_ef{embedding_first}"
            f"_{data}{kd}")


def kd_label(point) -> str:
    """The point's output distillation: "row's" where the sweep left the row's own."""
    alpha = point.get("kd_alpha")
    return "row's" if alpha is None else f"{alpha:g} (T={point['kd_temperature']:g})"


def sweep_table(sweep_dir: Path, teacher_score: float, score) -> str:
    """Every point under ``sweep_dir``, best first by ``score`` = (key, label, higher is better)."""
    key, label, higher = score
    points = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/point.json"))]
    points.sort(key=lambda point: -point[f"valid_{key}"] if higher else point[f"valid_{key}"])
    lines = [f"Teacher: {label} {teacher_score:.2f}. Command of each point: its point.json.",
             "", "| row | lr | schedule | warm-up | updates | β | emb.-first | data | "
             "output KD α | "
             f"{label} | best valid loss | train s |", "|" + "---|" * 12]
    for p in points:
        lines.append(
            f"| {p['row']} | {p['lr']:g} | {p['scheduler']} | {p['warmup']} | {p['updates']} | "
            f"{p['beta']:g} | {p['embedding_first']} | {p['data']} | {kd_label(p)} | "
            f"{p[f'valid_{key}']:.2f} | "
            f"{p.get('best_valid_loss', float('nan')):.3f} | {p['train_seconds']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True,
                        help="a finished recipe results directory (its data-bin and teacher); "
                        "the points go to <results>/sweep")
    parser.add_argument("--recipe", choices=["multi30k", "language_model"], default="multi30k",
                        help="whose rows and scoring: valid BLEU (multi30k) or valid perplexity")
    parser.add_argument("--profile", default="demo", help="the recipe's profile the results "
                        "directory was made with (its student flags are the base of every point)")
    parser.add_argument("--rows", nargs="+", default=["distilled_8x"],
                        help="the recipe's student rows to sweep")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3], help="peak learning rates")
    parser.add_argument("--scheduler", choices=SCHEDULERS, nargs="+", default=["inverse_sqrt"],
                        help="fairseq --lr-scheduler values")
    parser.add_argument("--warmup", type=int, nargs="+", default=[50],
                        help="--warmup-updates values")
    parser.add_argument("--updates", type=int, nargs="+", default=[250],
                        help="fine-tuning budgets (--max-update)")
    parser.add_argument("--beta", type=float, nargs="+", default=[1.0],
                        help="--embedding-distill-weight values (β of the embedding KD term)")
    parser.add_argument("--embedding-first", type=int, nargs="+", default=[0],
                        help="--embedding-first-updates values (updates that train only the "
                        "embedding's factors, the body frozen, before every weight)")
    parser.add_argument("--kd-alpha", type=float, nargs="+", default=[None],
                        help="output distillation weights to try (--kd-alpha of the criterion, "
                        "at --kd-temperature); default: each row's own")
    parser.add_argument("--kd-temperature", type=float, default=2.0,
                        help="the output distillation's temperature, with --kd-alpha")
    parser.add_argument("--train-data", nargs="+", default=["gold"],
                        choices=["gold", "teacher", "both"],
                        help="the students' training targets: the references, the teacher's "
                        "beam outputs (sequence KD), or both (multi30k only)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                        help="where fairseq-train runs")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false",
                        help="on GPU, train in fp32 (as the cpu profile does) instead of fp16")
    args = parser.parse_args()
    log_like_fairseq_cli()
    recipe = load_recipe(args.recipe)
    key = recipe.SCORE[0]
    args.use_gpu, args.max_tokens, args.student_updates = args.device == "gpu", None, None
    profile = recipe.with_overrides(recipe.PROFILES[args.profile], args)
    if args.recipe == "multi30k":  # the direction the results directory was prepared for
        args.source_lang, args.target_lang = recipe.language_pair(args.results)
    data_bin, teacher = args.results / "data-bin", args.results / "teacher" / "checkpoint_best.pt"
    sweep_dir = args.results / "sweep"
    teacher_score = recipe.evaluate(data_bin, teacher, teacher.parent, args.results, args, profile,
                                    "teacher", subset="valid")[key]
    grid = itertools.product(args.rows, args.lr, args.scheduler, args.warmup, args.updates,
                             args.beta, args.embedding_first, args.train_data, args.kd_alpha)
    for row, lr, scheduler, warmup, updates, beta, embedding_first, data, kd_alpha in grid:
        name = point_name(row, lr, scheduler, warmup, updates, beta, embedding_first, data,
                          kd_alpha, args.kd_temperature)
        save_dir = sweep_dir / name
        if (save_dir / "point.json").exists():
            continue
        row_data = recipe.training_data(args, profile, args.results, data_bin, teacher, data)
        flags = point_flags(recipe.student_flags(row, profile, args, teacher), lr, scheduler,
                            warmup, updates, beta, embedding_first, kd_alpha,
                            args.kd_temperature)
        summary = recipe.train(row_data, save_dir, flags, name, args.results)
        score = recipe.evaluate(data_bin, save_dir / "checkpoint_best.pt", save_dir, args.results,
                                args, profile, name, subset="valid")
        point = {"row": row, "lr": lr, "scheduler": scheduler, "warmup": warmup,
                 "updates": updates, "beta": beta, "embedding_first": embedding_first,
                 "data": data, "kd_alpha": kd_alpha, "kd_temperature": args.kd_temperature,
                 f"valid_{key}": score[key],
                 "best_valid_loss": summary.get("best_valid_loss"),
                 "train_seconds": summary["train_seconds"], "flags": flags}
        recipe.write_json(save_dir / "point.json", point)
        (sweep_dir / "sweep.md").write_text(sweep_table(sweep_dir, teacher_score, recipe.SCORE)
                                            + "\n")
        print(f"{name}: {recipe.SCORE[1]} {score[key]:.2f}", flush=True)
    print(sweep_table(sweep_dir, teacher_score, recipe.SCORE))


if __name__ == "__main__":
    main()
