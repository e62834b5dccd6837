#!/usr/bin/env python
"""Throughput and peak memory of distillation fine-tuning vs plain label-smoothed fine-tuning.

Three runs of the same student, batch and update count, side by side in one invocation (CPU):
plain ``label_smoothed_cross_entropy``; the distillation criterion with α = 0 (the paper's setting:
only the teacher's embedding matrix is used, no teacher forward); and with α > 0 (output-level KD,
one teacher forward per batch). Each configuration runs ``--repeats`` times, interleaved, and the
best words/s is kept. Targets (issue 5): α = 0 ≥ 0.95×, α > 0 ≥ 0.70× plain; peak memory ≤ 1.5×. α > 0 runs at
T = 1 and T = 2.

    python -m benchmarks.kd_throughput --data-bin results/multi30k-demo/data-bin \
        --teacher results/multi30k-demo/teacher/checkpoint_best.pt --arch-flags "..."

``--untrained-teacher DIR`` instead trains a 2-update teacher of ``--arch-flags`` into DIR (kept
and reused): speed and memory do not depend on the weights, so the recipe's full-size teacher
(``--arch-flags recipe``) can be measured without its hours of training.
"""

import argparse
import json
import shlex
import tempfile
from pathlib import Path

from benchmarks.common import PLUGIN, REPO, run_cli, steady_wps

CONFIGS = {
    "plain_ls": ["--criterion", "label_smoothed_cross_entropy"],
    "distill_alpha0": ["--criterion", "label_smoothed_cross_entropy_with_distillation"],
    "distill_alpha0.5_T1": ["--criterion", "label_smoothed_cross_entropy_with_distillation",
                            "--kd-alpha", "0.5", "--kd-temperature", "1"],
    "distill_alpha0.5_T2": ["--criterion", "label_smoothed_cross_entropy_with_distillation",
                            "--kd-alpha", "0.5", "--kd-temperature", "2"],
}
RECIPE_TEACHER_ARCH = (  # examples/multi30k's full-profile teacher (issue 6)
    "--encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256 --decoder-embed-dim 256 "
    "--encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 --encoder-attention-heads 4 "
    "--decoder-attention-heads 4")


def train_args(args, save_dir):
    return ([args.data_bin, "--user-dir", PLUGIN, "--task", "translation_reconstruction_init",
             "--teacher-path", args.teacher, "--arch", "distilled_transformer",
             "--share-all-embeddings", "--embedding-compression", "8",
             "--reconstruction-steps", "50", "--label-smoothing", "0.1", "--optimizer", "adam",
             "--lr", "3e-4", "--max-tokens", str(args.max_tokens), "--max-update",
             str(args.updates), "--log-format", "simple", "--log-interval", "10", "--cpu",
             "--seed", "1", "--no-save", "--save-dir", save_dir, "--num-workers", "0"]
            + shlex.split(args.arch_flags))


def untrained_teacher(args) -> str:
    """A teacher checkpoint of ``--arch-flags`` after 2 updates, made once under the given dir."""
    checkpoint = args.untrained_teacher / "checkpoint_last.pt"
    if not checkpoint.exists():
        run_cli("train", [args.data_bin, "--arch", "transformer", "--share-all-embeddings",
                          "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "2000",
                          "--max-update", "2", "--cpu", "--save-dir", args.untrained_teacher,
                          "--no-epoch-checkpoints", "--num-workers", "0"]
                + shlex.split(args.arch_flags))
    return str(checkpoint)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = REPO / "results" / "multi30k-demo"
    parser.add_argument("--data-bin", default=str(demo / "data-bin"),
                        help="the fairseq-preprocess directory trained on")
    parser.add_argument("--teacher", default=str(demo / "teacher" / "checkpoint_best.pt"),
                        help="the teacher distilled from")
    parser.add_argument("--arch-flags", default=(
        "--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128 "
        "--encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 "
        "--decoder-attention-heads 4"),
        help="the teacher's architecture flags (default: the demo teacher's; 'recipe' = the "
             "full Multi30k recipe's 3+3 layers, d=256)")
    parser.add_argument("--untrained-teacher", type=Path,
                        help="measure with a 2-update teacher of --arch-flags trained into this "
                             "directory instead of --teacher")
    parser.add_argument("--updates", type=int, default=60, help="updates timed per run")
    parser.add_argument("--max-tokens", type=int, default=4096, help="fairseq-train --max-tokens")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of every configuration in turn; the best is kept")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.arch_flags == "recipe":
        args.arch_flags = RECIPE_TEACHER_ARCH
    if args.untrained_teacher:
        args.teacher = untrained_teacher(args)

    measured = {name: {"wps": 0.0, "peak_rss_mb": 0.0} for name in CONFIGS}
    for _ in range(args.repeats):
        for name, flags in CONFIGS.items():
            with tempfile.TemporaryDirectory() as save_dir:
                result = run_cli("train", train_args(args, save_dir) + flags)
            measured[name]["wps"] = max(measured[name]["wps"], steady_wps(result["output"]))
            measured[name]["peak_rss_mb"] = max(measured[name]["peak_rss_mb"],
                                                result["peak_rss_mb"])
    plain = measured["plain_ls"]
    print(f"| criterion | words/s | × plain | peak RSS MB | × plain |\n|---|---|---|---|---|")
    for name, row in measured.items():
        row["wps_ratio"] = row["wps"] / plain["wps"]
        row["memory_ratio"] = row["peak_rss_mb"] / plain["peak_rss_mb"]
        print(f"| {name} | {row['wps']:.0f} | {row['wps_ratio']:.2f} | {row['peak_rss_mb']:.0f} | "
              f"{row['memory_ratio']:.2f} |")
    if args.output:
        args.output.write_text(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
