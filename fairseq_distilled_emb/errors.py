"""User-facing errors: one clear line naming the flag or file and the fix, not a deep traceback."""

import pickle
import sys


class DistilledEmbeddingError(ValueError):
    """Bad input (a flag, a teacher file, a checkpoint): the message says what and how to fix it."""


def _print_user_errors_without_traceback(previous_hook):
    def hook(exc_type, exc, tb):
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "fairseq"
        if isinstance(exc, DistilledEmbeddingError):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            # fairseq's own torch.load of a --path file, refused by the safe unpickler
            from fairseq_distilled_emb.cli.checkpoint_io import unreadable_message

            print(f"{prog}: error: {unreadable_message('a checkpoint', exc)}", file=sys.stderr)
            return
        previous_hook(exc_type, exc, tb)

    hook._distilled_embedding_hook = True
    return hook


def install_excepthook():
    """Let uncaught DistilledEmbeddingErrors end stock fairseq commands with one line (exit 1).

    Other exceptions still reach the previous hook with their full traceback.
    """
    if not getattr(sys.excepthook, "_distilled_embedding_hook", False):
        sys.excepthook = _print_user_errors_without_traceback(sys.excepthook)
