"""label_smoothed_cross_entropy_with_distillation: identities, gradient flow, CLI training."""

import copy
import re

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from fairseq_distilled_emb.criterions.label_smoothed_cross_entropy_with_distillation import (
    LabelSmoothedCrossEntropyWithDistillationCriterion as DistillationCriterion,
    _DistillationKL,
    distillation_kl,
)
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import FactorizedEmbedding
from helpers import (
    PLUGIN_DIR,
    build_model_from_flags,
    build_student_from_teacher,
    combined_output,
    first_batch,
    parse_log_stats,
    run_fairseq,
)


@pytest.fixture(scope="module")
def student(data_bin, tiny_teacher, tmp_path_factory):
    """(task, model, batch): a reconstruction-initialised student and one real training batch."""
    _, task, model = build_student_from_teacher(
        data_bin, tiny_teacher.best, tmp_path_factory.mktemp("save")
    )
    return task, model, first_batch(task, "train")


def criterion(task, **overrides):
    options = dict(sentence_avg=False, label_smoothing=0.1, embedding_distill_weight=1.0,
                   embedding_distill_rows="batch", kd_alpha=0.0, kd_temperature=1.0)
    options.update(overrides)
    return DistillationCriterion(task, **options)


def test_with_both_weights_zero_it_is_fairseqs_label_smoothed_cross_entropy(student):
    task, model, batch = student
    model.train()
    torch.manual_seed(0)
    ours = criterion(task, embedding_distill_weight=0.0, kd_alpha=0.0)(model, batch)
    torch.manual_seed(0)
    stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, batch)
    assert torch.equal(ours[0], stock[0])
    assert ours[1] == stock[1]
    assert {k: v for k, v in ours[2].items()} == {k: v for k, v in stock[2].items()}


def test_kd_term_is_zero_when_the_teacher_is_the_student(student):
    task, model, batch = student
    model.eval()  # no dropout: the same model twice gives the same distribution
    saved_teacher = task.teacher
    task.teacher = copy.deepcopy(model)
    try:
        net_output = model(**batch["net_input"])
        kd = criterion(task, kd_alpha=1.0, kd_temperature=2.0).output_distill_loss(
            model, net_output, batch
        )
    finally:
        task.teacher = saved_teacher
    assert abs(kd.item()) < 1e-4


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("block_elements", [7, 1 << 21])
def test_blockwise_kl_matches_autograd_through_log_softmax(temperature, block_elements,
                                                           monkeypatch):
    """Value and gradient equal F.kl_div's on the kept rows; padding rows get no gradient."""
    monkeypatch.setattr(_DistillationKL, "BLOCK_ELEMENTS", block_elements)
    generator = torch.Generator().manual_seed(0)
    student_logits = (3 * torch.randn(4, 5, 11, generator=generator)).double()
    features = torch.randn(4, 5, 6, generator=generator).double()
    projection = torch.nn.Linear(6, 11, bias=False).double()
    keep = torch.rand(4, 5, generator=generator) > 0.3

    ours_input = student_logits.clone().requires_grad_()
    ours = distillation_kl(ours_input, keep, features, projection, temperature)
    (2.5 * ours).backward()

    reference_input = student_logits.clone().requires_grad_()
    reference = torch.nn.functional.kl_div(
        torch.log_softmax(reference_input[keep] / temperature, dim=-1),
        torch.log_softmax(projection(features[keep]).detach() / temperature, dim=-1),
        log_target=True, reduction="sum",
    )
    (2.5 * reference).backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    assert (ours_input.grad - reference_input.grad).abs().max().item() == pytest.approx(0, abs=1e-10)
    assert ours_input.grad[~keep].abs().sum() == 0
    assert projection.weight.grad is None


def test_blockwise_kl_in_bf16_computes_in_float32_and_returns_a_bf16_gradient():
    """--bf16/--fp16 training: half-precision logits, float32 softmaxes, gradient in the input dtype."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 50, generator=generator)
    features = torch.randn(2, 3, 8, generator=generator)
    projection = torch.nn.Linear(8, 50, bias=False)
    keep = torch.ones(2, 3, dtype=torch.bool)
    half_input = logits.bfloat16().requires_grad_()
    half = distillation_kl(half_input, keep, features.bfloat16(), projection.bfloat16(), 2.0)
    half.backward()
    full = distillation_kl(logits.bfloat16().float(), keep, features.bfloat16().float(),
                           projection.float(), 2.0)
    assert half.dtype == torch.float32 and half_input.grad.dtype == torch.bfloat16
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_kd_term_is_positive_against_the_real_teacher(student):
    task, model, batch = student
    model.eval()
    kd = criterion(task, kd_alpha=1.0).output_distill_loss(model, model(**batch["net_input"]), batch)
    assert kd.item() > 0


def grads_after(loss, model):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_embedding_term_reaches_only_u_and_w(student):
    task, model, batch = student
    model.train()
    grads = grads_after(criterion(task).embedding_distill_loss(model, batch), model)
    factor_names = {n for n in grads if n.endswith(".U") or n.endswith(".W")}
    assert factor_names and all(grads[n] is not None and grads[n].abs().sum() > 0
                                for n in factor_names)
    assert all(grads[n] is None for n in grads if n not in factor_names)


@pytest.mark.parametrize("rows", ["batch", "vocab"])
def test_embedding_term_is_the_relative_squared_error_of_the_selected_rows(student, rows):
    task, model, batch = student
    (embedding, target), = task.teacher_embedding_targets(model)
    loss = criterion(task, embedding_distill_rows=rows).embedding_distill_loss(model, batch)
    approx = embedding.materialize().detach()
    if rows == "batch":
        ids = torch.unique(torch.cat([batch["net_input"]["src_tokens"].reshape(-1),
                                      batch["target"].reshape(-1)]))
        ids = ids[ids.ne(embedding.padding_idx)]
        approx, target = approx[ids], target[ids]
    expected = (approx - target).pow(2).sum() / target.pow(2).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_kd_term_reaches_the_student_and_never_the_teacher(student):
    task, model, batch = student
    model.train()
    loss = criterion(task, kd_alpha=1.0).output_distill_loss(model, model(**batch["net_input"]), batch)
    grads = grads_after(loss, model)
    layer_grads = [g for n, g in grads.items() if "layers" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in layer_grads)
    assert all(p.grad is None for p in task.teacher.parameters())


def test_without_output_kd_the_teacher_never_runs(student):
    task, model, batch = student
    model.train()

    def forbidden(*args, **kwargs):
        raise AssertionError("the teacher ran with --kd-alpha 0")

    task.teacher.forward = forbidden
    try:
        loss, _, logging_output = criterion(task)(model, batch)
    finally:
        del task.teacher.forward
    assert "emb_loss" in logging_output and "kd_loss" not in logging_output
    assert torch.isfinite(loss)


def test_validation_loss_is_the_plain_label_smoothed_loss(student):
    task, model, batch = student
    model.eval()
    ours = criterion(task, kd_alpha=1.0)(model, batch)
    stock = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, batch)
    assert torch.equal(ours[0], stock[0])


def test_criterion_without_a_teacher_task_is_a_clear_error(data_bin):
    _, task, _ = build_model_from_flags(data_bin, "--share-all-embeddings",
                                        "--embedding-compression", "4")
    with pytest.raises(DistilledEmbeddingError, match="needs a teacher: use --task "
                                                       "translation_reconstruction_init"):
        criterion(task)


def test_negative_weight_is_rejected(student):
    task, _, _ = student
    with pytest.raises(DistilledEmbeddingError, match="--kd-alpha must be >= 0"):
        criterion(task, kd_alpha=-1.0)


def test_fairseq_train_with_distillation_lowers_the_validation_loss(data_bin, tiny_teacher, tmp_path):
    result = run_fairseq(
        "train", data_bin, "--user-dir", PLUGIN_DIR, "--task", "translation_reconstruction_init",
        "--teacher-path", tiny_teacher.best, "--arch", "distilled_transformer_tiny",
        "--share-all-embeddings", "--embedding-compression", "4",
        "--criterion", "label_smoothed_cross_entropy_with_distillation", "--label-smoothing", "0.1",
        "--kd-alpha", "0.5", "--kd-temperature", "2",
        "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000", "--max-update", "30",
        "--validate-interval-updates", "10", "--log-format", "simple", "--log-interval", "5",
        "--cpu", "--seed", "1", "--num-workers", "0", "--no-save", "--save-dir", tmp_path,
    )
    log = combined_output(result)
    valid = [float(v) for v in re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)]
    assert len(valid) >= 3 and valid[-1] < valid[0], valid
    rows = parse_log_stats(log)
    assert all({"loss", "nll_loss", "ppl", "emb_loss", "kd_loss"} <= set(row) for row in rows)


def test_cli_criterion_with_plain_translation_task_is_one_line_error(data_bin, tmp_path):
    result = run_fairseq(
        "train", data_bin, "--user-dir", PLUGIN_DIR, "--task", "translation",
        "--arch", "distilled_transformer_tiny", "--share-all-embeddings",
        "--embedding-compression", "4",
        "--criterion", "label_smoothed_cross_entropy_with_distillation",
        "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000", "--max-update", "2",
        "--cpu", "--save-dir", tmp_path, check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in combined_output(result)
    assert result.stderr.strip().splitlines()[-1].startswith(
        "fairseq-train: error: --criterion label_smoothed_cross_entropy_with_distillation needs a teacher"
    )
