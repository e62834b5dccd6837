"""User-facing errors: one clear line naming the flag or file and the fix, not a deep traceback."""

import pickle
import re
import sys

# torch's two wordings: an unknown global, or one from a module it blocks outright (os, posix, ...)
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)")


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


def unreadable_message(label: str, error: Exception) -> str:
    """Why torch could not read the file; a refused global is named, with the safe advice."""
    refused = _REFUSED_GLOBAL.search(str(error))
    if refused:
        return (
            f"{label} is not a readable fairseq checkpoint: it needs {refused.group(1)}, which "
            "safe loading (weights_only) refuses; do not turn safe loading off for a file you "
            "did not make: pass a checkpoint written by fairseq-train"
        )
    first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return (
        f"{label} is not a readable fairseq checkpoint ({type(error).__name__}: {first_line}); "
        "pass a checkpoint written by fairseq-train"
    )
