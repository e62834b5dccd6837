"""Keep fairseq 0.12 working on today's stack: torch >= 2.6 checkpoint loading and numpy 2.

torch 2.6 switched ``torch.load`` to ``weights_only=True``. fairseq 0.12 calls ``torch.load`` without
that argument, so every stock command (``fairseq-generate``, ``fairseq-interactive``,
``fairseq-eval-lm`` and ``fairseq-train``'s automatic resume) fails with ``Unsupported global:
argparse.Namespace``. Rather than disabling the restricted unpickler for the whole process, we
allow-list the few non-tensor classes a fairseq checkpoint contains: the argparse namespace of legacy
configs, the omegaconf containers of hydra configs, and fairseq's own logging meters stored in
``extra_state``. Anything else still fails, as torch intends.
"""

import argparse
import collections
import logging
import os
import types

import torch

logger = logging.getLogger(__name__)


def fairseq_checkpoint_globals():
    """The classes (beyond plain containers and tensors) found in fairseq 0.12 checkpoints."""
    from fairseq.logging import meters
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode
    import typing

    return [
        argparse.Namespace,
        collections.OrderedDict,
        collections.defaultdict,
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        BooleanNode,
        FloatNode,
        IntegerNode,
        StringNode,
        typing.Any,
        dict,
        list,
        int,
        float,
        meters.AverageMeter,
        meters.SumMeter,
        meters.ConcatTensorMeter,
        meters.TimeMeter,
        meters.StopwatchMeter,
        meters.MetersDict,
    ] + _numpy_scalar_globals()


#: numpy 2 renamed ``numpy.core`` to ``numpy._core``; a pickle names the module of the numpy that
#: wrote it, so each of these is allow-listed under both spellings.
NUMPY_CORE_MODULES = ("numpy.core", "numpy._core")


def _numpy_scalar_globals():
    """numpy arrays and scalars (``--eval-bleu``'s count meters in ``extra_state["metrics"]``, a
    ``best_loss`` computed with numpy) pickle through these, written by numpy 1 or numpy 2."""
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray
    found = [np.dtype, np.ndarray]
    found += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    for function in (multiarray.scalar, multiarray._reconstruct):
        found += [(function, f"{module}.multiarray.{function.__name__}")
                  for module in NUMPY_CORE_MODULES]
    return found


def allow_fairseq_checkpoints_in_safe_torch_load():
    """Register fairseq's checkpoint classes with torch's weights-only unpickler (idempotent)."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 has no restricted default: nothing to do
        return
    add_safe_globals(fairseq_checkpoint_globals())


def keep_safe_loading_on():
    """Undo ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` for this process (with a warning).

    The variable is a common workaround for fairseq on torch >= 2.6; it makes every ``torch.load``
    that does not pass ``weights_only`` (all of fairseq's) unpickle freely, so a ``--path`` or
    ``--teacher-path`` file can run code. With the allow-list above fairseq's checkpoints load
    safely, so the plugin needs the workaround nowhere and removes it.
    """
    if os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None) is not None:
        logger.warning(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD ignored: fairseq_distilled_emb loads fairseq "
            "checkpoints with torch's safe (weights-only) unpickler; full unpickling would run "
            "any code a checkpoint file carries"
        )


def restore_numpy_compat_long():
    """fairseq 0.12 uses ``np.compat.long`` (language_pair_dataset, token_block_dataset).

    numpy 2 removed ``np.compat``. ``setup.py`` pins ``numpy<2`` for a fresh install, but GPU images
    often ship numpy 2 already; there, this restores the one alias fairseq needs (it was ``int``).
    """
    import numpy as np

    if not hasattr(np, "compat"):
        np.compat = types.SimpleNamespace(long=int)
