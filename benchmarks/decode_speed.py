#!/usr/bin/env python
"""CPU decoding speed of students vs. the teacher: same test set, beam, batch, threads, one run.

Each checkpoint is decoded ``--repeats`` times with ``fairseq-generate --cpu`` (interleaved, best
sentences/s kept); the ratio is against the first checkpoint (the teacher). Target (issue 6): the
student decodes ≥ 1.15× the teacher's sentences/s.

    python -m benchmarks.decode_speed results/multi30k-demo/data-bin \
        results/multi30k-demo/teacher/checkpoint_best.pt results/multi30k-demo/rows/distilled_8x/checkpoint_best.pt

``--ctranslate2 DIR --source FILE`` adds a CTranslate2 model (``benchmarks/ctranslate2_anchor.py``
converts the teacher) to the same interleaved loop: the sentencepiece-encoded ``FILE`` (the same
sentences) with the same beam and batch on the same cores, timed around ``translate_batch``.
"""

import argparse
import json
from pathlib import Path

from benchmarks.common import PLUGIN, run_cli
from benchmarks.ctranslate2_anchor import translate

from fairseq_distilled_emb.evaluation import decode_speed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_bin", help="the fairseq-preprocess directory the checkpoints use")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="teacher first, then students")
    parser.add_argument("--beam", type=int, default=5, help="fairseq-generate --beam")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="fairseq-generate --batch-size (sentences)")
    parser.add_argument("--subset", default="test", help="the split decoded")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of every model in turn; the best sentences/s is kept")
    parser.add_argument("--output", type=Path, help="write the speeds as JSON here")
    parser.add_argument("--ctranslate2", type=Path, nargs="*", default=[],
                        help="CTranslate2 model directories to time in the same loop")
    parser.add_argument("--source", type=Path, help="with --ctranslate2: the encoded source file")
    args = parser.parse_args()

    speeds = {str(path): 0.0 for path in args.checkpoints + args.ctranslate2}
    sources = args.source.read_text().splitlines() if args.ctranslate2 else []
    for _ in range(args.repeats):
        for model_dir in args.ctranslate2:
            _hypotheses, seconds = translate(model_dir, sources, beam=args.beam,
                                             batch_size=args.batch_size)
            speeds[str(model_dir)] = max(speeds[str(model_dir)], len(sources) / seconds)
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
