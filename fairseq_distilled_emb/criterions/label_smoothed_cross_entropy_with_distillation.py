"""Label-smoothed cross-entropy plus Distilled Embedding's distillation terms.

Training loss, summed over the batch's non-padding target tokens like fairseq's criterion::

    loss = LS-CE(student, gold)
         + β · ntokens · Σ_rows ‖f(U)W[row] − E_teacher[row]‖² / Σ_rows ‖E_teacher[row]‖²
         + α · T² · Σ_tokens KL(softmax(teacher/T) ‖ softmax(student/T))

β (``--embedding-distill-weight``) weighs the paper's embedding distillation: the relative squared
reconstruction error of the factorized embedding against the teacher's, over the rows of the batch's
tokens (``--embedding-distill-rows batch``) or the whole vocabulary (``vocab``); normalising by the
teacher's squared norm makes β independent of the embedding's scale, and the ``ntokens`` factor gives
it the same per-token weight as the cross-entropy whatever the batch size. α (``--kd-alpha``, off by
default, beyond the paper) adds output-level distillation at temperature T (``--kd-temperature``).
With α = 0 the teacher never runs: only its embedding matrix is used.

Validation reports the plain label-smoothed cross-entropy (the distillation terms are training
signals), so checkpoints are selected on the same scale as the teacher's.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from fairseq_distilled_emb.errors import DistilledEmbeddingError

EMBEDDING_DISTILL_ROWS = ChoiceEnum(["batch", "vocab"])


@dataclass
class LabelSmoothedCrossEntropyWithDistillationConfig(LabelSmoothedCrossEntropyCriterionConfig):
    embedding_distill_weight: float = field(
        default=1.0,
        metadata={"help": "β: weight of the embedding distillation term, the relative squared error "
                          "sum_rows ||f(U)W - E_teacher||^2 / sum_rows ||E_teacher||^2 counted once "
                          "per target token (the paper's distillation; 0 turns it off)"},
    )
    embedding_distill_rows: EMBEDDING_DISTILL_ROWS = field(
        default="batch",
        metadata={"help": "embedding rows the β term compares: the batch's tokens or the whole "
                          "vocabulary"},
    )
    kd_alpha: float = field(
        default=0.0,
        metadata={"help": "α: weight of output-level KD, α·T²·KL(teacher_T || student_T) per "
                          "target token (beyond the paper; 0 = the teacher never runs)"},
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "T: softmax temperature of the output-level KD term"}
    )


@register_criterion(
    "label_smoothed_cross_entropy_with_distillation",
    dataclass=LabelSmoothedCrossEntropyWithDistillationConfig,
)
class LabelSmoothedCrossEntropyWithDistillationCriterion(LabelSmoothedCrossEntropyCriterion):
    """fairseq's label-smoothed CE + β·embedding distillation + α·T²·output KD (see module doc)."""

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        embedding_distill_weight=1.0,
        embedding_distill_rows="batch",
        kd_alpha=0.0,
        kd_temperature=1.0,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if embedding_distill_weight < 0 or kd_alpha < 0 or kd_temperature <= 0:
            raise DistilledEmbeddingError(
                "--embedding-distill-weight and --kd-alpha must be >= 0 and --kd-temperature > 0"
            )
        self.embedding_distill_weight = embedding_distill_weight
        self.embedding_distill_rows = embedding_distill_rows
        self.kd_alpha = kd_alpha
        self.kd_temperature = kd_temperature
        if self.needs_teacher and not hasattr(task, "teacher_model"):
            raise DistilledEmbeddingError(
                "--criterion label_smoothed_cross_entropy_with_distillation needs a teacher: use "
                "--task translation_reconstruction_init (or language_modeling_reconstruction_init) "
                "with --teacher-path TEACHER.pt, or set --embedding-distill-weight 0 --kd-alpha 0"
            )

    @property
    def needs_teacher(self):
        return self.embedding_distill_weight > 0 or self.kd_alpha > 0

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if model.training and reduce:
            if self.embedding_distill_weight > 0:
                emb_loss = self.embedding_distill_loss(model, sample)
                loss = loss + self.embedding_distill_weight * sample["ntokens"] * emb_loss
                logging_output["emb_loss"] = emb_loss.data * sample["ntokens"]
            if self.kd_alpha > 0:
                kd_loss = self.output_distill_loss(model, net_output, sample)
                loss = loss + self.kd_alpha * self.kd_temperature ** 2 * kd_loss
                logging_output["kd_loss"] = kd_loss.data
            logging_output["loss"] = loss.data
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    def embedding_distill_loss(self, model, sample):
        """Relative squared error of f(U)W against the teacher's E over the selected rows."""
        errors, norms = [], []
        for embedding, target in self.task.teacher_embedding_targets(model):
            rows = self._distilled_rows(model, embedding, sample)
            if rows is None:
                approx, reference = embedding.materialize(), target
            else:
                approx = embedding.activation_fn(embedding.U[rows]) @ embedding.W
                reference = target[rows]
            errors.append((approx.float() - reference.float()).pow(2).sum())
            norms.append(reference.float().pow(2).sum())
        return sum(errors) / sum(norms).clamp_min(1e-12)

    def _distilled_rows(self, model, embedding, sample):
        """Token ids whose rows the β term compares (None = the whole vocabulary)."""
        if self.embedding_distill_rows == "vocab":
            return None
        encoder = getattr(model, "encoder", None)
        decoder_embedding = model.decoder.embed_tokens
        feeds = []
        if encoder is not None and embedding is getattr(encoder, "embed_tokens", None):
            feeds.append(sample["net_input"]["src_tokens"])
        if embedding is decoder_embedding:
            feeds.append(sample["target"])
            if encoder is None:  # language model: its inputs feed the decoder embedding
                feeds.append(sample["net_input"]["src_tokens"])
        ids = torch.unique(torch.cat([tokens.reshape(-1) for tokens in feeds]))
        return ids[ids.ne(embedding.padding_idx)]

    def output_distill_loss(self, model, net_output, sample):
        """Σ over non-pad target tokens of KL(softmax(teacher/T) ‖ softmax(student/T)).

        Padding positions are dropped before the V-wide softmaxes: with a vocabulary of thousands,
        those (not the teacher's layers) are most of the cost of this term.
        """
        teacher = self.task.teacher_model(model)
        with torch.no_grad():
            teacher_logits = teacher(**sample["net_input"])[0]
        student_logits = net_output[0]
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            student_logits = student_logits[:, self.ignore_prefix_size :]
            teacher_logits = teacher_logits[:, self.ignore_prefix_size :]
            target = target[:, self.ignore_prefix_size :]
        keep = target.ne(self.padding_idx)
        temperature = self.kd_temperature
        student_lprobs = F.log_softmax(student_logits[keep].float() / temperature, dim=-1)
        teacher_lprobs = F.log_softmax(teacher_logits[keep].float() / temperature, dim=-1)
        return F.kl_div(student_lprobs, teacher_lprobs, log_target=True, reduction="sum")

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """fairseq's loss/nll_loss/ppl, plus emb_loss (relative squared error) and kd_loss (bits)."""
        super().reduce_metrics(logging_outputs)
        ntokens = max(sum(log.get("ntokens", 0) for log in logging_outputs), 1)
        if any("emb_loss" in log for log in logging_outputs):
            emb_loss = sum(log.get("emb_loss", 0) for log in logging_outputs)
            metrics.log_scalar("emb_loss", emb_loss / ntokens, ntokens, round=4)
        if any("kd_loss" in log for log in logging_outputs):
            kd_loss = sum(log.get("kd_loss", 0) for log in logging_outputs)
            metrics.log_scalar("kd_loss", kd_loss / ntokens / math.log(2), ntokens, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
