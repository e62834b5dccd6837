#!/usr/bin/env python
"""CPU decoding speed of students vs. the teacher: same test set, beam, batch, threads, one run.

Each checkpoint is decoded ``--repeats`` times with ``fairseq-generate --cpu`` (interleaved, best
sentences/s kept); the ratio is against the first checkpoint (the teacher). Target (issue 6): the
student decodes ≥ 1.15× the teacher's sentences/s.

    python -m benchmarks.decode_speed results/multi30k-demo/data-bin \
        results/multi30k-demo/teacher/checkpoint_best.pt results/multi30k-demo/rows/distilled_8x/checkpoint_best.pt
"""

import argparse
import json
from pathlib import Path

from benchmarks.common import PLUGIN, run_cli

from fairseq_distilled_emb.evaluation import decode_speed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_bin")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="teacher first, then students")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--subset", default="test")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    speeds = {str(path): 0.0 for path in args.checkpoints}
    for _ in range(args.repeats):
        for path in args.checkpoints:
            result = run_cli("generate", [
                args.data_bin, "--user-dir", PLUGIN, "--path", path, "--gen-subset", args.subset,
                "--beam", args.beam, "--batch-size", args.batch_size,
                "--required-batch-size-multiple", "1", "--remove-bpe", "sentencepiece", "--cpu",
                "--quiet"])
            speeds[str(path)] = max(speeds[str(path)], decode_speed(result["output"]) or 0.0)
    reference = speeds[str(args.checkpoints[0])]
    print("| checkpoint | sentences/s (CPU) | × first |\n|---|---|---|")
    for path, speed in speeds.items():
        print(f"| {path} | {speed:.1f} | {speed / reference:.2f} |")
    if args.output:
        args.output.write_text(json.dumps(speeds, indent=2))


if __name__ == "__main__":
    main()
