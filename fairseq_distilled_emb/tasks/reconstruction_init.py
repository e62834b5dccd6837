"""Reconstruction-init tasks: start a factorized student from a trained teacher checkpoint.

The first half of Distilled Embedding. On ``build_model`` the task

1. loads the teacher (a stock ``transformer*``/``transformer_lm*`` or a ``distilled_*`` checkpoint)
   and validates it against the data and the student's ``--arch`` before any work, with one clear
   error per problem (:mod:`fairseq_distilled_emb.tasks.teacher`);
2. initialises each factorized embedding from the teacher's embedding E
   (``--embedding-init reconstruct|svd|random``, see :mod:`fairseq_distilled_emb.factorization`);
3. copies every non-embedding parameter of the teacher into the student (strict shapes);
4. keeps the teacher frozen on the task (never in the student's modules, optimizer, parameter count
   or checkpoints) for the distillation criterion.

A student checkpoint loads without the teacher file: fairseq rebuilds this task from the saved config
with ``from_checkpoint=True`` and nothing teacher-related runs then. Resuming a training run from an
existing ``checkpoint_last.pt`` keeps the teacher for distillation but skips steps 2–3, since the
trainer restores the student's weights right after.
"""

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import (
    CompressedEmbedding,
    TeacherInit,
    outermost_compressed_embeddings,
)
from fairseq_distilled_emb.tasks.teacher import (  # noqa: F401  (ARCHITECTURE_FIELDS: for tasks)
    ARCHITECTURE_FIELDS,
    TeacherCheckpoint,
)

logger = logging.getLogger(__name__)

EMBEDDING_INIT_CHOICES = ChoiceEnum(["reconstruct", "svd", "random"])

@dataclass
class ReconstructionInitConfig:
    """Fields shared by the translation and language-modeling reconstruction-init tasks."""

    teacher_path: Optional[str] = field(
        default=None,
        metadata={"help": "trained teacher checkpoint (a fairseq transformer* with a shared "
                          "embedding) to reconstruct the embedding from and distill from"},
    )
    embedding_init: EMBEDDING_INIT_CHOICES = field(
        default="reconstruct",
        metadata={"help": "how to initialise U and W: 'reconstruct' (the method: sign-aware start, "
                          "then Adam on ||f(U)W - E||^2), 'svd' (truncated SVD, the optimal linear "
                          "factorization; a baseline) or 'random' (fairseq's normal init; ablation)"},
    )
    reconstruction_steps: int = field(
        default=2000, metadata={"help": "maximum Adam steps of the reconstruction fit"}
    )
    reconstruction_lr: float = field(
        default=3e-3, metadata={"help": "Adam learning rate of the reconstruction fit (the target is "
                                        "normalised to unit RMS, so this is scale-free)"}
    )
    reconstruction_min_improvement: float = field(
        default=1e-3,
        metadata={"help": "stop the fit when the relative Frobenius error improved by less than "
                          "this fraction over the last check (every 50 steps)"},
    )
    embedding_first_updates: int = field(
        default=0,
        metadata={"help": "train only the compressed embedding's factors for the first N updates "
                          "(the body copied from the teacher frozen), then every weight; 0: off"},
    )
    # Read from the rest of the configuration, not set by the user.
    save_dir: str = II("checkpoint.save_dir")
    restore_file: str = II("checkpoint.restore_file")
    no_save: bool = II("checkpoint.no_save")
    cpu: bool = II("common.cpu")


@dataclass
class TranslationReconstructionInitConfig(TranslationConfig, ReconstructionInitConfig):
    pass


class ReconstructionInitMixin:
    """Teacher loading/validation, reconstruction init, weight copy and the frozen teacher.

    Mixed into a fairseq task (translation or language modeling); the task supplies the dictionaries.
    """

    teacher = None
    teacher_embeddings: Dict[str, torch.Tensor] = None
    _body_frozen = None  # unknown until the first train_step
    #: configuration fields whose teacher and student values must agree (a task may extend them)
    architecture_fields: Tuple[str, ...] = ARCHITECTURE_FIELDS

    # --------------------------------------------------------------------------- fairseq hooks

    def build_model(self, cfg, from_checkpoint=False):
        if from_checkpoint:
            # Decoding (or loading a teacher/student by path): the teacher file is not needed.
            return super().build_model(cfg, from_checkpoint)
        checkpoint = TeacherCheckpoint(self.cfg.teacher_path, f"--task {self._task_name()}")
        checkpoint.validate(cfg, self._dictionaries(), len(self.target_dictionary), self.cfg.data,
                            self.architecture_fields)
        student = super().build_model(cfg, from_checkpoint)
        student_embeddings = self._student_embeddings(student)
        teacher = checkpoint.build(self)
        self.teacher_embeddings = self._pair_embeddings(student, teacher)
        self.teacher = teacher
        resume_path = self._resume_checkpoint_path()
        if resume_path is not None:
            logger.info(
                f"resuming from {resume_path}: skipping the reconstruction init and weight copy "
                "(the trainer restores the student's weights)"
            )
        else:
            self._initialise_student(student, teacher, student_embeddings)
        return student

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._set_embedding_first_phase(model, update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def _set_embedding_first_phase(self, model, update_num):
        """Freeze every weight but the compressed embedding's while ``update_num`` is below
        ``--embedding-first-updates``: the factors adapt to the copied body before the body moves.

        A frozen weight gets no gradient, so fairseq's Adam skips it (fp32: bit-identical; the
        flat fp32 copy of ``--fp16`` gives it a zero gradient, so only weight decay touches it).
        """
        first_updates = getattr(self.cfg, "embedding_first_updates", 0) or 0
        frozen = update_num < first_updates
        if first_updates <= 0 or frozen == self._body_frozen:
            return
        embedding_params = {
            id(param)
            for embedding in outermost_compressed_embeddings(model).values()
            for param in embedding.parameters()
        }
        for param in model.parameters():
            if id(param) not in embedding_params:
                param.requires_grad_(not frozen)
        self._body_frozen = frozen
        logger.info(
            f"update {update_num}: "
            + ("training the compressed embedding only (body frozen)" if frozen
               else "training every weight")
        )

    def teacher_model(self, like: torch.nn.Module):
        """The frozen teacher on the same device and dtype as ``like`` (moved once, lazily)."""
        if self.teacher is None:
            raise DistilledEmbeddingError(
                "no teacher is loaded: distillation needs --task "
                "translation_reconstruction_init (or language_modeling_reconstruction_init) with "
                "--teacher-path TEACHER.pt"
            )
        reference = next(like.parameters())
        teacher_param = next(self.teacher.parameters())
        if teacher_param.device != reference.device or teacher_param.dtype != reference.dtype:
            self.teacher.to(device=reference.device, dtype=reference.dtype)
        return self.teacher

    def teacher_embedding_targets(self, model) -> List[Tuple[torch.nn.Module, torch.Tensor]]:
        """(student embedding, teacher E on the student's device/dtype) pairs, shared ones once."""
        if self.teacher_embeddings is None:
            self.teacher_model(model)  # raises the no-teacher error
        pairs = []
        for name, target in self.teacher_embeddings.items():
            embedding = _get_submodule(model, name)
            reference = next(embedding.parameters())
            if target.device != reference.device or target.dtype != reference.dtype:
                target = target.to(device=reference.device, dtype=reference.dtype)
                self.teacher_embeddings[name] = target
            pairs.append((embedding, target))
        return pairs

    # --------------------------------------------------------------------------- initialisation

    def _student_embeddings(self, student):
        embeddings = outermost_compressed_embeddings(student)
        if not embeddings:
            raise DistilledEmbeddingError(
                f"--task {self._task_name()} needs a student with a factorized embedding: use a "
                "distilled_transformer* (or distilled_transformer_lm*) --arch"
            )
        return embeddings

    def _pair_embeddings(self, student, teacher):
        """Map each distinct student compressed embedding (by name) to the teacher's dense E."""
        pairs = {}
        for name, _ in outermost_compressed_embeddings(student).items():
            pairs[name] = _dense_weight(_get_submodule(teacher, name)).detach().float().clone()
        return pairs

    def _initialise_student(self, student, teacher, student_embeddings):
        init = TeacherInit(
            method=str(self.cfg.embedding_init), steps=self.cfg.reconstruction_steps,
            lr=self.cfg.reconstruction_lr, min_improvement=self.cfg.reconstruction_min_improvement,
            device=self._reconstruction_device(), log=logger.info, warn=logger.warning)
        figures = {}
        for name, embedding in student_embeddings.items():
            start = embedding.initialize_from(self.teacher_embeddings[name], init, name)
            figures[name] = {"kind": embedding.kind, "size": embedding.size_description(),
                             "params": embedding.num_compressed_params(), **start}
        copied, skipped = _copy_non_embedding_weights(student, teacher)
        logger.info(
            f"copied {copied} non-embedding parameter tensors from the teacher; not copied "
            f"(replaced by the factorization): {', '.join(skipped) or 'none'}"
        )
        self._write_figures(student, figures)

    def _write_figures(self, student, embeddings):
        """``<save-dir>/reconstruction.json``: the student's size and each embedding's start from
        the teacher, for scripts (the recipe's table) that would otherwise parse the log."""
        if getattr(self.cfg, "no_save", False):
            return
        os.makedirs(self.cfg.save_dir, exist_ok=True)
        path = os.path.join(self.cfg.save_dir, "reconstruction.json")
        payload = {"teacher_path": self.cfg.teacher_path,
                   "total_params": sum(p.numel() for p in student.parameters()),
                   "embeddings": embeddings}
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(temporary, path)

    def _reconstruction_device(self):
        if torch.cuda.is_available() and not self.cfg.cpu:
            return torch.device("cuda")
        return torch.device("cpu")

    def _resume_checkpoint_path(self) -> Optional[str]:
        """The checkpoint fairseq-train will restore the student from, if it exists (as fairseq)."""
        restore_file = self.cfg.restore_file
        if restore_file == "checkpoint_last.pt":
            path = os.path.join(self.cfg.save_dir, "checkpoint_last.pt")
        else:
            path = restore_file
        return path if path and os.path.isfile(path) else None

    def _task_name(self):
        return getattr(self.cfg, "_name", None) or type(self).__name__

    def _dictionaries(self):
        """``[{"dictionary": Dictionary, "lang": "de"} or {..., "file": "dict.txt"}, ...]``: the
        task's dictionaries and their file in a data directory (``file``, else dict.<lang>.txt)."""
        raise NotImplementedError


@register_task("translation_reconstruction_init", dataclass=TranslationReconstructionInitConfig)
class TranslationReconstructionInitTask(ReconstructionInitMixin, TranslationTask):
    """Translation whose factorized student starts from (and distils from) a trained teacher."""

    def _dictionaries(self):
        return [
            {"lang": self.cfg.source_lang, "dictionary": self.source_dictionary},
            {"lang": self.cfg.target_lang, "dictionary": self.target_dictionary},
        ]


# ------------------------------------------------------------------------------- module helpers


def _get_submodule(model, dotted_name):
    """Resolve ``decoder.embed_tokens`` on a model or a fairseq DDP wrapper (which proxies attrs)."""
    return functools.reduce(getattr, dotted_name.split("."), model)


def _dense_weight(module):
    """The teacher's E: a dense embedding's weight, or what a compressed teacher stands for."""
    return module.materialize() if isinstance(module, CompressedEmbedding) else module.weight


def _copy_non_embedding_weights(student, teacher):
    """Copy every student tensor not owned by a factorized embedding from the teacher (strict)."""
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    factorized_prefixes = tuple(
        name + "."
        for name, module in student.named_modules(remove_duplicate=False)
        if isinstance(module, CompressedEmbedding)
    )
    copied = 0
    with torch.no_grad():
        for key, tensor in student_state.items():
            if key.startswith(factorized_prefixes):
                continue
            if key not in teacher_state or teacher_state[key].shape != tensor.shape:
                found = tuple(teacher_state[key].shape) if key in teacher_state else "missing"
                raise DistilledEmbeddingError(
                    f"--teacher-path: the teacher's {key} is {found}, the student needs "
                    f"{tuple(tensor.shape)}: use the teacher's architecture family for --arch"
                )
            tensor.copy_(teacher_state[key])
            copied += 1
    skipped = sorted(key for key in teacher_state if key not in student_state)
    return copied, skipped
