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
                approx = embedding(rows)
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

        The teacher runs without its output layer; ``distillation_kl`` applies it to the
        non-padding positions only, a block of rows at a time (see ``_DistillationKL``).
        """
        teacher = self.task.teacher_model(model)
        keep = model.get_targets(sample, net_output).ne(self.padding_idx)
        keep[:, : self.ignore_prefix_size] = False
        with torch.inference_mode():
            teacher_features = teacher(**sample["net_input"], features_only=True)[0]
        return distillation_kl(student_output_logits(model, net_output), keep, teacher_features,
                               output_projection(teacher), self.kd_temperature)

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


def student_output_logits(model, net_output):
    """The V-way logits of ``net_output``: a compressed language model's decoder returns hidden
    states and projects them only when asked (DistilledLanguageModelDecoder.output_logits)."""
    if hasattr(model.decoder, "output_logits"):
        return model.decoder.output_logits(net_output)
    return net_output[0]


def output_projection(model):
    """hidden states → V-way logits for ``model`` (a stock or a compressed teacher)."""
    if hasattr(model.decoder, "output_logits"):
        return lambda features: model.decoder.output_logits((features,))
    return model.decoder.output_layer


def distillation_kl(student_logits, keep, teacher_features, teacher_output_layer,
                    temperature: float):
    """Σ over ``keep`` positions of KL(softmax(teacher/T) ‖ softmax(student/T)).

    ``student_logits`` (B, T, V) carries the gradient; the teacher's logits are
    ``teacher_output_layer(teacher_features)``, computed here under no_grad, only for kept rows.
    """
    return _DistillationKL.apply(student_logits, keep, teacher_features.detach(),
                                 teacher_output_layer, temperature)


class _DistillationKL(torch.autograd.Function):
    """The KD term and its closed-form gradient (softmax(student/T) − softmax(teacher/T)) / T.

    Why not ``F.kl_div(F.log_softmax(...))`` on whole (N, V) tensors: with a vocabulary of thousands
    the term is a dozen V-wide passes over memory plus the teacher's V-wide projection, and autograd
    keeps several (N, V) tensors alive until backward; that made KD training 2.4x slower than plain
    training on CPU (benchmarks/kd_throughput.py). Here the teacher's logits, both softmaxes and
    the gradient are computed a block of rows at a time, so each block stays in cache, padding rows
    are skipped, the teacher's (N, V) logits never exist whole, and the gradient (written straight
    into a (B·T, V) buffer) is the only tensor kept for backward. Per row, with s, t the logits
    over T, p = softmax(t) and q = softmax(s), KL(p ‖ q) = Σ p·(t − s) − logsumexp(t) +
    logsumexp(s): one exp per element and side, two dot products, no V-wide logarithm.
    """

    BLOCK_ELEMENTS = 1 << 21  # 8 MiB of float32 per block tensor: cache-sized, yet a full-speed mm

    @staticmethod
    def forward(ctx, student_logits, keep, teacher_features, teacher_output_layer, temperature):
        vocab = student_logits.size(-1)
        flat_logits = student_logits.detach().reshape(-1, vocab)
        keep = keep.reshape(-1)
        rows = keep.nonzero().squeeze(1)
        teacher_rows = teacher_features.reshape(-1, teacher_features.size(-1)).index_select(0, rows)
        gradient = torch.empty_like(flat_logits)
        gradient.index_fill_(0, (~keep).nonzero().squeeze(1), 0)
        compute_dtype = torch.promote_types(flat_logits.dtype, torch.float32)  # fp16/bf16 → fp32
        loss = flat_logits.new_zeros((), dtype=compute_dtype)
        block = max(1, _DistillationKL.BLOCK_ELEMENTS // vocab)
        with torch.no_grad():
            for start in range(0, rows.numel(), block):
                index = rows[start : start + block]
                student = flat_logits.index_select(0, index).to(compute_dtype)
                teacher = teacher_output_layer(teacher_rows[start : start + block]).to(compute_dtype)
                if temperature != 1:
                    student.div_(temperature)
                    teacher.div_(temperature)
                student_probs, student_lse = _softmax_and_logsumexp(student)
                teacher_probs, teacher_lse = _softmax_and_logsumexp(teacher)
                loss += (torch.dot(teacher_probs.view(-1), teacher.view(-1))
                         - torch.dot(teacher_probs.view(-1), student.view(-1))
                         + (student_lse - teacher_lse).sum())
                gradient.index_copy_(0, index, student_probs.sub_(teacher_probs).to(gradient.dtype))
        ctx.temperature = temperature
        ctx.backward_done = False
        ctx.save_for_backward(gradient.view_as(student_logits))
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.backward_done:
            raise RuntimeError("the distillation KL's graph cannot be backpropagated twice")
        ctx.backward_done = True
        (gradient,) = ctx.saved_tensors
        # in place: the buffer was made for this one backward, and a copy costs a V-wide pass
        return gradient.mul_(grad_output.to(gradient.dtype) / ctx.temperature), None, None, None, None


def _softmax_and_logsumexp(logits):
    """Row-wise softmax and logsumexp with one exp per element.

    logsumexp = max(x) − log(max(softmax(x))), both maxima at the same position; max(softmax) ≥ 1/V,
    so the logarithm is always finite.
    """
    probs = torch.softmax(logits, dim=-1)
    return probs, logits.amax(dim=-1) - probs.amax(dim=-1).log()
