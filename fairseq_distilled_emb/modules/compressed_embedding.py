"""The interface every compressed embedding implements, and the registry behind
``--embedding-factorization``.

A compressed embedding stores a V×d token embedding in fewer parameters and owns everything that
depends on how: the lookup, the tied output logits, the dense matrix it stands for, its size
resolution from the model's flags, its start from a trained teacher's E, and the line the training
log and ``fairseq-distilled-emb stats`` print. Models, the reconstruction-init task, the criterion,
``export`` and ``stats`` only talk to this interface, so a new kind (product quantization, say) is
one module file with a ``@register_compressed_embedding("name")`` class, imported in
``modules/__init__.py``.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Set, Type

import torch
import torch.nn as nn

from fairseq_distilled_emb.checkpoints import config_value
from fairseq_distilled_emb.errors import DistilledEmbeddingError

#: --embedding-factorization name → class (filled by ``register_compressed_embedding``)
COMPRESSED_EMBEDDING_REGISTRY: Dict[str, Type["CompressedEmbedding"]] = {}


def register_compressed_embedding(name: str):
    """Class decorator: make ``name`` a value of ``--embedding-factorization``."""

    def register(cls):
        if name in COMPRESSED_EMBEDDING_REGISTRY:
            raise ValueError(f"compressed embedding {name!r} is already registered")
        cls.kind = name
        COMPRESSED_EMBEDDING_REGISTRY[name] = cls
        return cls

    return register


@dataclass
class TeacherInit:
    """How to start from the teacher's E (``--embedding-init`` and the reconstruction flags)."""

    method: str = "reconstruct"  # reconstruct | svd | random
    steps: int = 2000
    lr: float = 1e-2
    min_improvement: float = 1e-4
    device: torch.device = torch.device("cpu")
    log: Callable[[str], None] = print  # the task's logger.info, so the lines stay the task's
    warn: Callable[[str], None] = print


class CompressedEmbedding(nn.Module):
    """A V×d embedding stored compressed; exposes what fairseq reads from an ``nn.Embedding``
    (``num_embeddings``, ``embedding_dim``, ``padding_idx``) and returns zeros for padding."""

    kind: str = ""  # set by register_compressed_embedding
    #: stores integer codes (``export --embedding-bits``): ``stats`` then counts its ratio in bytes
    #: against fp32 E, not in stored numbers
    integer_codes: bool = False

    num_embeddings: int
    embedding_dim: int
    padding_idx: Optional[int]

    @classmethod
    def from_args(cls, args, num_embeddings: int, embedding_dim: int,
                  padding_idx: Optional[int]) -> "CompressedEmbedding":
        """Build from the model's flags (``--embedding-rank``/``--embedding-compression``/...),
        resolving the size this kind needs; bad flags raise a DistilledEmbeddingError."""
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kept_while_decoding(self, compute: Callable[[], object]):
        """``compute()``, computed once and reused while gradients are off (decoding projects
        every step, ``fairseq-eval-lm --softmax-batch`` every chunk), recomputed with gradients.

        The kept value is dropped whenever the module switches between training and evaluation
        (:meth:`train`) and when any of its tensors is moved or changed in place through the
        tensor itself. fairseq's optimizers write through ``p.data``, which moves neither the
        pointer nor the version of a parameter, so a key alone would go stale across updates;
        fairseq switches to ``eval()`` before every validation, which drops the value.
        """
        if torch.is_grad_enabled():
            return compute()
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype)
                    for t in (*self.parameters(), *self.buffers()))
        kept = self.__dict__.get("_kept_while_decoding")
        if kept is None or kept[0] != key:
            kept = (key, compute())
            self.__dict__["_kept_while_decoding"] = kept
        return kept[1]

    def train(self, mode: bool = True):
        self.__dict__.pop("_kept_while_decoding", None)
        return super().train(mode)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden·Eᵀ``: the decoder's tied output projection."""
        raise NotImplementedError

    def materialize(self) -> torch.Tensor:
        """The dense V×d matrix this module stands for (padding row zero)."""
        raise NotImplementedError

    def num_compressed_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def size_description(self) -> str:
        """The size knob as the training log and ``stats`` print it, e.g. ``rank=15``."""
        raise NotImplementedError

    def initialize_from(self, target: torch.Tensor, init: TeacherInit, name: str) -> Dict:
        """Start from the teacher's dense E (``target``, V×d), log how close the start is and
        return the figures (at least ``relative_error``: ‖start − E‖_F / ‖E‖_F) that the task
        writes to ``reconstruction.json`` beside the checkpoints."""
        raise NotImplementedError

    # --------------------------------------------- a saved model state (export, stats), unbuilt

    @classmethod
    def owns_key(cls, key: str) -> bool:
        """Whether ``key`` of a saved model state is one of this kind's tensors."""
        raise NotImplementedError

    @classmethod
    def module_prefix(cls, key: str) -> str:
        """The module path of one of this kind's keys (``decoder.embed_tokens``)."""
        return key.rsplit(".", 1)[0]

    @classmethod
    def saved_dense_weight(cls, tensors: Dict[str, torch.Tensor], model_cfg) -> torch.Tensor:
        """The V×d matrix a saved module stands for (``tensors``: its state, keys relative to
        the module); what ``export --dense`` writes in its place."""
        raise DistilledEmbeddingError(
            f"--dense: a {cls.kind} embedding cannot be made dense from its checkpoint; export "
            "it without --dense")

    @classmethod
    def saved_size(cls, tensors: Dict[str, torch.Tensor], model_cfg) -> Dict:
        """``{"vocab", "dim", "size"}`` of a saved module for ``stats`` (None where unknown;
        ``size`` as ``size_description`` says it)."""
        raise NotImplementedError


def compressed_embedding_class(name: Optional[str]) -> Type[CompressedEmbedding]:
    """The class ``--embedding-factorization name`` registered (default ``low-rank``)."""
    name = name or "low-rank"
    if name not in COMPRESSED_EMBEDDING_REGISTRY:
        raise DistilledEmbeddingError(
            f"--embedding-factorization {name} is not a registered compressed embedding; choose "
            f"one of {', '.join(sorted(COMPRESSED_EMBEDDING_REGISTRY))}")
    return COMPRESSED_EMBEDDING_REGISTRY[name]


def build_compressed_embedding(args, dictionary, embed_dim) -> CompressedEmbedding:
    """The compressed embedding ``--embedding-factorization`` names, sized by the model's flags."""
    cls = compressed_embedding_class(getattr(args, "embedding_factorization", None))
    return cls.from_args(args, len(dictionary), embed_dim, dictionary.pad())


def outermost_compressed_embeddings(model: nn.Module) -> Dict[str, CompressedEmbedding]:
    """``model``'s distinct compressed embeddings by their first name (a shared one once), without
    the decoder's tied output projection and without those built inside another one (a
    ``dense-head`` embedding's tail is a ``low-rank`` one): what is sized, logged and started
    from the teacher is the outer module."""
    found: Dict[str, CompressedEmbedding] = {}
    for name, module in model.named_modules():
        if (isinstance(module, CompressedEmbedding) and "output_projection" not in name
                and not any(name.startswith(f"{outer}.") for outer in found)
                and all(module is not other for other in found.values())):
            found[name] = module
    return found


def compressed_keys(model_state: Dict[str, torch.Tensor]) -> Set[str]:
    """The keys of ``model_state`` that belong to a compressed embedding of any registered kind."""
    kinds = COMPRESSED_EMBEDDING_REGISTRY.values()
    return {key for key in model_state if any(kind.owns_key(key) for kind in kinds)}


def saved_compressed_embeddings(model_state: Dict[str, torch.Tensor], model_cfg):
    """``(class, {module prefix: its tensors})`` of a saved model state's compressed embeddings
    (keys relative to the prefix; a tied factorization appears under each module's prefix)."""
    cls = compressed_embedding_class(config_value(model_cfg, "embedding_factorization"))
    grouped: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in model_state.items():
        if cls.owns_key(key):
            prefix = cls.module_prefix(key)
            grouped.setdefault(prefix, {})[key[len(prefix) + 1:]] = value
    return cls, grouped

