"""``fairseq-distilled-emb`` / ``python -m fairseq_distilled_emb``: export, stats, rank."""

import argparse
import logging
import sys

from fairseq_distilled_emb.cli import export, stats
from fairseq_distilled_emb.errors import DistilledEmbeddingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-distilled-emb",
        description="Export and inspect Distilled Embedding (factorized embedding) checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export.add_arguments(commands.add_parser(
        "export", help="compact inference checkpoint (optionally --fp16, --dense)",
        description=export.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    stats.add_stats_arguments(commands.add_parser(
        "stats", help="embedding vs. other parameters, rank, ratio, size of any fairseq checkpoint"))
    stats.add_rank_arguments(commands.add_parser(
        "rank", help="the rank for a vocabulary, dimension and target compression ratio"))
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s | %(message)s")
    args = build_parser().parse_args(argv)
    handlers = {"export": export.run, "stats": stats.run_stats, "rank": stats.run_rank}
    try:
        handlers[args.command](args)
    except DistilledEmbeddingError as error:
        print(f"fairseq-distilled-emb {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
