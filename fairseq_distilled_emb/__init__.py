"""Distilled Embedding for fairseq: a factorized shared embedding E ≈ f(U)·W.

Loaded by ``fairseq-train --user-dir fairseq_distilled_emb`` (or ``import fairseq_distilled_emb``
after ``pip install -e .``); importing it registers the architectures, tasks and criterion below.
"""

from fairseq_distilled_emb.compat import (
    allow_fairseq_checkpoints_in_safe_torch_load,
    keep_safe_loading_on,
    restore_numpy_compat_long,
)
from fairseq_distilled_emb.errors import DistilledEmbeddingError, install_excepthook

allow_fairseq_checkpoints_in_safe_torch_load()
keep_safe_loading_on()
restore_numpy_compat_long()
install_excepthook()

from fairseq_distilled_emb import criterions, models, tasks  # noqa: E402,F401  (registers them)

__version__ = "0.1.0"
