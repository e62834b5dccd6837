"""Reading and writing fairseq checkpoints safely: the package's trust boundary.

The teacher (``--teacher-path``), ``export`` and ``stats`` read every user's file through
:func:`load_checkpoint`; ``export`` writes through :func:`save_checkpoint`.

Reading uses torch's restricted (weights-only) unpickler with the fairseq classes allow-listed by
:mod:`fairseq_distilled_emb.compat`, never ``weights_only=False``: a corrupt, foreign or malicious
file gives one clear error. Writing goes to a temporary file in the destination directory and is
renamed into place, so an interrupted export never leaves a half-written checkpoint, and an existing
file is only replaced with ``--force``.
"""

import argparse
import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import torch
from omegaconf import DictConfig

from fairseq_distilled_emb import compat
from fairseq_distilled_emb.errors import DistilledEmbeddingError, unreadable_message


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
        isinstance(state.get("cfg"), (dict, DictConfig))
        or isinstance(state.get("args"), argparse.Namespace)
    ) or not all(torch.is_tensor(value) for value in state["model"].values()):
        raise DistilledEmbeddingError(
            f"{label} is not a fairseq checkpoint (it needs a 'model' dict of tensors and a "
            "'cfg' or 'args' configuration); pass a checkpoint written by fairseq-train"
        )
    state["model"] = retie_copies(state["model"])
    return state


def config_value(cfg, name: str):
    """One field of a configuration as fairseq saves or builds it (a plain dict, an OmegaConf
    ``DictConfig``, an argparse ``Namespace`` or a dataclass); None where it is absent or unset.

    Struct-mode OmegaConf configs raise on unknown keys: that also means "absent" here.
    """
    try:
        if isinstance(cfg, (dict, DictConfig)):
            return cfg.get(name)
        return getattr(cfg, name, None)
    except Exception:  # omegaconf's ConfigAttributeError/ConfigKeyError
        return None


def saved_arch(model_cfg: dict) -> str:
    """The architecture a saved model config names (``arch``; ``_name`` for dataclass models)."""
    return str(model_cfg.get("arch") or model_cfg.get("_name") or "")


def set_saved_arch(model_cfg: dict, arch: str) -> None:
    """Name ``arch`` wherever the saved model config names its architecture."""
    for key in ("arch", "_name"):
        if key in model_cfg:
            model_cfg[key] = arch


#: where fairseq's ``AdaptiveInput`` keeps its bands: ``<prefix><i>.0`` a table, ``<i>.1`` its
#: projection to d
ADAPTIVE_BANDS = "decoder.embed_tokens.embeddings."


def adaptive_input_bands(model: Dict[str, torch.Tensor]) -> List[str]:
    """The band prefixes (``decoder.embed_tokens.embeddings.<i>.0``) of fairseq's
    ``AdaptiveInput``, each band's table stored as ``.weight`` or as the plugin's integer codes
    (``.code_shape`` and the rest); empty for any other model. Another storage of the bands (e.g.
    fairseq's iPQ centroids) is bad input: one error line."""
    bands = {key.rsplit(".", 1)[0] for key in model if key.startswith(ADAPTIVE_BANDS)
             and key.count(".") == ADAPTIVE_BANDS.count(".") + 2 and key.split(".")[-2] == "0"}
    for prefix in bands:
        if f"{prefix}.weight" not in model and f"{prefix}.code_shape" not in model:
            raise DistilledEmbeddingError(
                f"{prefix} (adaptive input) holds neither a float table (.weight) nor the "
                "plugin's integer codes; pass a checkpoint written by fairseq-train or by "
                "fairseq-distilled-emb export")
    return sorted(bands, key=lambda prefix: int(prefix.split(".")[-2]))


def tensor_identity(value: torch.Tensor):
    """What tied tensors share: the same storage, offset and shape."""
    return (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))


def retie_copies(model: dict) -> dict:
    """``model`` with tied weights tied again where the file holds them as separate copies.

    fairseq copies a GPU model's state to the host tensor by tensor before saving, so a model
    trained on a GPU stores a shared embedding once per module that uses it (3x the bytes for
    ``--share-all-embeddings``; seen on an H100: a 15.2 MB fp16 export became 23.4 MB, and
    ``stats`` counted the matrix three times). A matrix (2-D or more) equal in shape, dtype and
    every value to an earlier one is taken to be that one; vectors are left alone (a LayerNorm's
    ones or an unused bias can be equal without being tied)."""
    seen = {}
    tied = {}
    for key, value in model.items():
        if value.dim() >= 2:
            candidates = seen.setdefault((tuple(value.shape), value.dtype), [])
            earlier = next((other for other in candidates if torch.equal(other, value)), None)
            if earlier is None:
                candidates.append(value)
            else:
                value = earlier
        tied[key] = value
    return tied


def save_checkpoint(state: dict, path, force: bool = False) -> int:
    """Write ``state`` to ``path`` durably; refuse to replace a file unless ``force``.

    The bytes go to a temporary file beside ``path`` (fsynced, then given the mode the umask
    allows, as ``open`` would), which is then linked into place without ``--force`` (``os.link``
    fails if the name appeared meanwhile: no race between the check and the write) or renamed over
    the old file with it; the directory is fsynced last. Temporary files left by an export that was
    killed are removed (and said). Every OS error is one :class:`DistilledEmbeddingError`.
    """
    path = Path(path)
    if path.is_dir():
        raise DistilledEmbeddingError(f"{path} is a directory: give the output file's path")
    if path.exists() and not force:
        raise DistilledEmbeddingError(f"{path} exists: choose another output or pass --force")
    blocker = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()),
                   None)
    if blocker is not None:
        raise DistilledEmbeddingError(f"cannot write {path}: {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
    except OSError as error:
        raise DistilledEmbeddingError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        if force:
            os.replace(temporary, path)
        else:
            _place_without_replacing(temporary, path)
        _fsync_directory(path.parent)
    except FileExistsError:
        raise DistilledEmbeddingError(
            f"{path} exists: choose another output or pass --force") from None
    except OSError as error:
        raise DistilledEmbeddingError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path.stat().st_size


def _place_without_replacing(temporary: str, path: Path) -> None:
    """Give ``temporary`` the name ``path`` only if nothing has it (FileExistsError otherwise)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # a file system without hard links: claim the name with O_EXCL, then rename over it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.replace(temporary, path)


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.*.tmp`` files beside ``path``: what an export killed mid-write leaves."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink()
        print(f"removed {stale}, left by an interrupted export", file=sys.stderr)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
