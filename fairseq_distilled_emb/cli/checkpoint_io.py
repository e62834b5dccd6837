"""Reading and writing fairseq checkpoints safely for the CLI tools.

Reading uses torch's restricted (weights-only) unpickler with the fairseq classes allow-listed by
:mod:`fairseq_distilled_emb.compat`, never ``weights_only=False``: a corrupt, foreign or malicious
file gives one clear error. Writing goes to a temporary file in the destination directory and is
renamed into place, so an interrupted export never leaves a half-written checkpoint, and an existing
file is only replaced with ``--force``.
"""

import os
import re
import tempfile
from pathlib import Path

import torch

from fairseq_distilled_emb import compat
from fairseq_distilled_emb.errors import DistilledEmbeddingError


# torch's two wordings: an unknown global, or one from a module it blocks outright (os, posix, ...)
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)")


def load_checkpoint(path, label=None) -> dict:
    """A fairseq checkpoint dict (with 'model' and 'cfg' or 'args'), or one clear error.

    Always ``weights_only=True``, passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in
    the environment cannot turn it off. ``label`` names the file in errors (default: its path;
    the task passes ``--teacher-path X``).
    """
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise DistilledEmbeddingError(f"{label}: no such checkpoint file")
    compat.allow_fairseq_checkpoints_in_safe_torch_load()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip/pickle/unpickler errors all mean "not a usable checkpoint"
        raise DistilledEmbeddingError(unreadable_message(label, error)) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not (
        state.get("cfg") is not None or state.get("args") is not None
    ):
        raise DistilledEmbeddingError(
            f"{label} is not a fairseq checkpoint (no 'model' and 'cfg'/'args' entries); "
            "pass a checkpoint written by fairseq-train"
        )
    return state


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


def save_checkpoint(state: dict, path, force: bool = False) -> int:
    """Write ``state`` atomically to ``path``; refuse to replace a file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise DistilledEmbeddingError(f"{path} exists: choose another output or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path.stat().st_size
