"""language_modeling_reconstruction_init, end to end through the stock console scripts on CPU:
``fairseq-preprocess --only-source`` (the English side of the session's sentencepiece corpus) →
a stock dense ``transformer_lm_gpt2_tiny`` teacher (tied embedding, a few updates) → a
``distilled_transformer_lm_tiny`` student with reconstruction init and the distillation criterion →
``fairseq-eval-lm`` perplexity and stock sampling (``fairseq-interactive --task
language_modeling``); plus the in-process weight copy / frozen teacher / criterion on LM batches,
and the bad inputs."""

import math
import re

import pytest
import torch

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import FactorizedEmbedding
from helpers import (
    PLUGIN_DIR,
    combined_output,
    hypotheses,
    loaded_model_and_batch,
    parse_log_stats,
    preprocess_english,
    run_distilled_emb,
    run_fairseq,
    target_log_probs,
)

TEACHER_UPDATES = 30
STUDENT_UPDATES = 8
LM_DATA = ["--tokens-per-sample", "64", "--sample-break-mode", "eos"]
ERROR_LINE = re.compile(
    r"relative Frobenius error ([\d.]+) \| rank-(\d+) SVD ([\d.]+) \| rank-(\d+) SVD ([\d.]+)"
)
EVAL_LM = re.compile(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+|inf|nan)")


def train_common(save_dir, max_update, lr="5e-3"):
    return [
        *LM_DATA, "--optimizer", "adam", "--lr", lr, "--max-tokens", "2000",
        "--max-update", str(max_update), "--log-format", "simple", "--log-interval", "1",
        "--cpu", "--seed", "1", "--num-workers", "0", "--no-epoch-checkpoints",
        "--save-dir", save_dir,
    ]


def student_args(data_bin, teacher, save_dir, *extra, max_update=STUDENT_UPDATES):
    return [
        data_bin, "--user-dir", PLUGIN_DIR, "--task", "language_modeling_reconstruction_init",
        "--teacher-path", teacher, "--arch", "distilled_transformer_lm_tiny",
        "--share-decoder-input-output-embed",
        "--criterion", "label_smoothed_cross_entropy_with_distillation", "--label-smoothing", "0.1",
        *train_common(save_dir, max_update, lr="1e-3"), *extra,
    ]


# ----------------------------------------------------------------------------- pipeline fixtures


@pytest.fixture(scope="module")
def lm_teacher(lm_data_bin, tmp_path_factory):
    """A stock dense transformer_lm_gpt2_tiny with a tied embedding, trained WITHOUT the plugin."""
    save_dir = tmp_path_factory.mktemp("lm-teacher")
    run_fairseq(
        "train", lm_data_bin, "--task", "language_modeling", "--arch", "transformer_lm_gpt2_tiny",
        "--share-decoder-input-output-embed", "--criterion", "cross_entropy",
        *train_common(save_dir, TEACHER_UPDATES), timeout=600,
    )
    assert (save_dir / "checkpoint_best.pt").exists()
    return save_dir / "checkpoint_best.pt"


@pytest.fixture(scope="module")
def lm_student(lm_data_bin, lm_teacher, tmp_path_factory):
    """Reconstruction init at 4x, then embedding distillation and output KD (α=0.5)."""
    save_dir = tmp_path_factory.mktemp("lm-student")
    result = run_fairseq(
        "train", *student_args(lm_data_bin, lm_teacher, save_dir, "--embedding-compression", "4",
                               "--kd-alpha", "0.5"),
        timeout=600,
    )
    assert (save_dir / "checkpoint_best.pt").exists()
    return save_dir / "checkpoint_best.pt", combined_output(result)


def vocabulary_size(data_bin):
    return 4 + sum(1 for _ in open(data_bin / "dict.txt", encoding="utf-8"))


# ----------------------------------------------------------------------------- CLI: training


def test_student_log_reports_factorization_reconstruction_and_distillation(lm_student, lm_data_bin):
    _checkpoint, log = lm_student
    summaries = [line for line in log.splitlines() if "factorized embedding:" in line]
    assert len(summaries) == 1, summaries  # one tied embedding
    assert f"V={vocabulary_size(lm_data_bin)} d=64" in summaries[0]
    match = ERROR_LINE.search(log)
    assert match, log[-3000:]
    error, rank, svd_r, _rank_below, svd_below = match.groups()
    assert float(svd_r) - 1e-4 <= float(error) <= float(svd_below) + 1e-4
    copied = re.search(r"copied (\d+) non-embedding parameter tensors from the teacher; not copied "
                       r"\(replaced by the factorization\): (.*)", log)
    assert copied and int(copied.group(1)) > 0
    assert copied.group(2).split(", ") == [
        "decoder.embed_tokens.weight", "decoder.output_projection.weight"
    ]
    rows = parse_log_stats(log, "train_inner")
    assert [int(r["num_updates"]) for r in rows] == list(range(1, STUDENT_UPDATES + 1))
    for row in rows:  # the β and α terms ran on LM batches
        assert math.isfinite(float(row["loss"]))
        assert float(row["emb_loss"]) >= 0 and float(row["kd_loss"]) >= 0


def test_student_checkpoint_holds_factors_and_no_teacher(lm_student, lm_data_bin):
    checkpoint, _log = lm_student
    state = torch.load(checkpoint, weights_only=False)
    keys = set(state["model"])
    assert {"decoder.embed_tokens.U", "decoder.embed_tokens.W"} <= keys
    assert not any("teacher" in key for key in keys)
    vocab = vocabulary_size(lm_data_bin)
    dense = {(vocab, 64), (64, vocab)}
    assert not [k for k, v in state["model"].items() if tuple(v.shape) in dense]
    assert state["cfg"]["task"]["_name"] == "language_modeling_reconstruction_init"


def test_student_checkpoint_loads_without_the_teacher_file(lm_student):
    """fairseq rebuilds the saved task (with from_checkpoint=True): the teacher is not read."""
    import fairseq_distilled_emb  # noqa: F401
    from fairseq import checkpoint_utils

    checkpoint, _log = lm_student
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"teacher_path": "/nonexistent/teacher.pt"}
    )
    assert task.teacher is None
    assert isinstance(models[0].decoder.embed_tokens, FactorizedEmbedding)


# ----------------------------------------------------------------------------- CLI: eval, sampling


def eval_lm(data_bin, checkpoint, plugin=True):
    result = run_fairseq(
        "eval-lm", data_bin, *(["--user-dir", PLUGIN_DIR] if plugin else []), "--path",
        checkpoint, "--gen-subset", "test", *LM_DATA, "--max-tokens", "4000", "--cpu",
        timeout=300,
    )
    match = EVAL_LM.search(combined_output(result))
    assert match, combined_output(result)[-3000:]
    return float(match.group(1)), float(match.group(2))


def test_eval_lm_reports_a_finite_student_perplexity(lm_student, lm_data_bin):
    checkpoint, _log = lm_student
    loss, perplexity = eval_lm(lm_data_bin, checkpoint)
    assert math.isfinite(perplexity) and math.isfinite(loss)
    assert perplexity == pytest.approx(2 ** loss, rel=1e-3)
    # a started teacher's copy beats the uniform distribution over the vocabulary by far
    assert 1 < perplexity < vocabulary_size(lm_data_bin) / 2


def test_a_whole_file_in_codes_with_an_int8_body_scores_close_to_its_float_body(
        lm_student, lm_data_bin, tmp_path):
    """What an LM user ships (``export --embedding-bits 8 --int8-body``): every Linear of the
    decoder layers as int8 codes, and fairseq-eval-lm scores it within 1 % of the same file with a
    float body (the WikiText-2 students: +0.2–0.3 %)."""
    checkpoint, _log = lm_student
    floating, integer = tmp_path / "float-body.pt", tmp_path / "int8-body.pt"
    for out, flags in ((floating, []), (integer, ["--int8-body"])):
        result = run_distilled_emb("export", "--embedding-bits", "8", *flags, checkpoint, out)
        assert result.returncode == 0, result.stderr[-2000:]
    model = torch.load(integer, weights_only=True)["model"]
    codes = sorted(key for key in model if key.endswith(".weight_codes"))
    assert len(codes) == 2 * 6  # 2 layers: q, k, v, out_proj, fc1, fc2
    assert all(model[key].dtype == torch.int8 and ".layers." in key for key in codes)
    assert integer.stat().st_size < 0.6 * floating.stat().st_size
    (_, float_ppl), (_, int8_ppl) = (eval_lm(lm_data_bin, path) for path in (floating, integer))
    assert int8_ppl == pytest.approx(float_ppl, rel=0.01)
    # the int8 body is what scored: the reference tokens' log-probabilities moved, a little
    (float_scores, _, _), (int8_scores, _, _) = (target_log_probs(path, max_sentences=8)
                                                 for path in (floating, integer))
    assert 0 < (int8_scores - float_scores).abs().max().item() < 0.05


@pytest.fixture(scope="module")
def stock_lm_export(lm_student, tmp_path_factory):
    """``export --project-in-out`` of the student: a stock transformer_lm (read by two tests)."""
    checkpoint, _log = lm_student
    stock = tmp_path_factory.mktemp("stock-lm") / "stock_lm.pt"
    export = run_distilled_emb("export", "--project-in-out", checkpoint, stock)
    assert export.returncode == 0, export.stderr[-2000:]
    return stock


def test_project_in_out_export_is_a_stock_transformer_lm_with_the_students_probabilities(
        lm_student, stock_lm_export, lm_data_bin):
    """f(U) as the stock embedding, W as project_in_dim/project_out_dim: plain fairseq (no
    plugin) scores the test set as the student does."""
    checkpoint, _log = lm_student
    stock = stock_lm_export
    saved = torch.load(stock, weights_only=True)
    assert saved["cfg"]["model"]["_name"] == "transformer_lm"
    rank = saved["model"]["decoder.project_out_dim.weight"].shape[0]
    assert saved["cfg"]["model"]["decoder_input_dim"] == saved["cfg"]["model"][
        "decoder_output_dim"] == rank < 64
    assert not any(key.endswith((".U", ".W")) for key in saved["model"])
    # the stock tool, without --user-dir, reports the student's loss and perplexity
    assert eval_lm(lm_data_bin, stock, plugin=False) == eval_lm(lm_data_bin, checkpoint)
    # and its per-token log-probabilities are the student's
    scores = []
    for path in (checkpoint, stock):
        model, _task, batch = loaded_model_and_batch(path, max_sentences=8)
        with torch.no_grad():
            scores.append(model.get_normalized_probs(model(**batch["net_input"]), log_probs=True))
    assert type(model.decoder.embed_tokens) is torch.nn.Embedding
    # the same product from re-balanced factors: fp32 rounding of the student's own f(U)·W is
    # amplified by its cancellation (measured 1.1e-4 here), the re-balanced product's is not
    assert torch.allclose(scores[0], scores[1], rtol=0, atol=3e-4)


def test_ctranslate2_converts_the_project_in_out_export_and_scores_as_the_student(
        lm_student, stock_lm_export, lm_data_bin, tmp_path):
    """CTranslate2's fairseq converter accepts the stock export (transformer_lm with project
    in/out); its float32 model gives each target token the student's log-probability."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from benchmarks.ctranslate2_anchor import convert, converter_input

    checkpoint, _log = lm_student
    source = converter_input(stock_lm_export, tmp_path)
    model_bin = convert(source, lm_data_bin, tmp_path / "ct2", "float32")
    expected, target, dictionary = target_log_probs(checkpoint, max_sentences=8)
    pad = dictionary.pad()
    # fairseq's LM starts every sample from </s>; CTranslate2 scores the tokens after the first
    sentences = [["</s>"] + [dictionary[i] for i in row[row != pad].tolist()]
                 for row in target]
    generator = ctranslate2.Generator(str(model_bin.parent), device="cpu")
    for row, result in enumerate(generator.score_batch(sentences)):
        wanted = expected[row][target[row] != pad]
        assert torch.allclose(torch.tensor(result.log_probs), wanted, rtol=0, atol=1e-4)
    # int8 (both factors in per-row codes): the re-balanced factors keep the mean log-probability.
    # The stored codes, dequantized (compute float32): measured 0.0003 off; the student's own
    # f(U) and W exported as they are, 0.022. CTranslate2's int8 compute also quantizes the
    # activations, and what that costs depends on the CPU: 0.0016 where this was first
    # measured, 0.064 on an AVX2-only one; the student's own factors, 8.2.
    int8 = convert(source, lm_data_bin, tmp_path / "ct2_int8", "int8")
    wanted_mean = expected[target != pad].mean()
    for compute_type, bound in (("float32", 5e-3), ("int8", 0.25)):
        generator = ctranslate2.Generator(str(int8.parent), device="cpu",
                                          compute_type=compute_type)
        scored = torch.cat([torch.tensor(result.log_probs)
                            for result in generator.score_batch(sentences)])
        assert abs(scored.mean() - wanted_mean) < bound, compute_type


def test_stock_interactive_sampling_continues_prompts(
    lm_student, lm_data_bin, spm_corpus, multi30k_corpus
):
    checkpoint, _log = lm_student
    # the first words of two test captions: in-vocabulary for the real and the generated corpus
    openings = [" ".join(line.split()[:2]) for line in multi30k_corpus.lines("test", "en")[:2]]
    prompts = spm_corpus.encode(openings)
    result = run_fairseq(
        "interactive", lm_data_bin, "--task", "language_modeling", "--user-dir", PLUGIN_DIR,
        "--path", checkpoint, "--sampling", "--sampling-topk", "10", "--beam", "1",
        "--max-len-b", "12", "--seed", "1", "--cpu",
        input="\n".join(prompts) + "\n", timeout=300,
    )
    found = hypotheses(result.stdout)
    assert sorted(found) == [0, 1], result.stdout[-3000:]
    for index, prompt in enumerate(prompts):
        assert found[index].startswith(prompt), (prompt, found[index])
        assert len(found[index].split()) > len(prompt.split())  # it generated something


# ----------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def built_student(lm_data_bin, lm_teacher, tmp_path_factory):
    """(args, task, student) of the LM reconstruction-init task, built as fairseq-train does."""
    from fairseq import options, tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        str(a) for a in student_args(lm_data_bin, lm_teacher, tmp_path_factory.mktemp("built"),
                                     "--embedding-compression", "4")
    ])
    task = tasks.setup_task(args)
    return args, task, task.build_model(args)


def test_weights_copied_and_teacher_frozen_outside_the_student(built_student, lm_teacher):
    _args, task, student = built_student
    teacher_state = torch.load(lm_teacher, weights_only=False)["model"]
    for key, tensor in student.state_dict().items():
        if key.endswith((".U", ".W")):
            continue
        assert torch.equal(tensor, teacher_state[key]), key
    embedding = student.decoder.embed_tokens
    target = teacher_state["decoder.embed_tokens.weight"].float()
    error = factorization.relative_error(target, embedding.materialize().detach())
    assert error <= factorization.svd_relative_error(target, embedding.rank - 1) + 1e-4
    teacher_params = {id(p) for p in task.teacher.parameters()}
    assert not teacher_params & {id(p) for p in student.parameters()}
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert not task.teacher.training


def test_criterion_on_a_language_model_batch(built_student):
    """The β term compares exactly the rows of the batch's tokens (input and target) and the loss
    is the plain label-smoothed CE plus the weighted terms."""
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
    from fairseq_distilled_emb.criterions.label_smoothed_cross_entropy_with_distillation import (
        LabelSmoothedCrossEntropyWithDistillationCriterion as Criterion,
    )

    _args, task, student = built_student
    task.load_dataset("valid")
    batch = next(iter(task.get_batch_iterator(
        dataset=task.dataset("valid"), max_sentences=8, seed=1
    ).next_epoch_itr(shuffle=False)))
    assert "src_tokens" in batch["net_input"] and getattr(student, "encoder", None) is None
    criterion = Criterion(task, False, 0.1, embedding_distill_weight=1.0, kd_alpha=0.5)
    plain = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    student.train()
    torch.manual_seed(0)
    loss, sample_size, logging_output = criterion(student, batch)
    torch.manual_seed(0)
    plain_loss, _, _ = plain(student, batch)
    emb_loss = logging_output["emb_loss"] / batch["ntokens"]
    assert loss.item() == pytest.approx(
        plain_loss.item() + batch["ntokens"] * emb_loss.item()
        + 0.5 * logging_output["kd_loss"].item(), rel=1e-5
    )
    rows = criterion._distilled_rows(student, student.decoder.embed_tokens, batch)
    expected = torch.unique(torch.cat([batch["target"].reshape(-1),
                                       batch["net_input"]["src_tokens"].reshape(-1)]))
    assert torch.equal(rows, expected[expected.ne(task.source_dictionary.pad())])
    loss.backward()
    assert student.decoder.embed_tokens.U.grad is not None


def test_teacher_of_another_shape_family_is_rejected(lm_data_bin, lm_teacher, tmp_path):
    """Same tensor shapes, different computation: a post-norm relu ``distilled_transformer_lm``
    student of the pre-norm gelu gpt2_tiny teacher is refused before any work."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), input_args=[
        str(a) for a in student_args(lm_data_bin, lm_teacher, tmp_path, "--embedding-rank", "8")
    ] + ["--arch", "distilled_transformer_lm", "--decoder-embed-dim", "64",
         "--decoder-input-dim", "64", "--decoder-output-dim", "64", "--decoder-ffn-embed-dim",
         "64", "--decoder-layers", "2", "--decoder-attention-heads", "1"])
    cfg = convert_namespace_to_omegaconf(args)  # as fairseq-train: the model's dataclass defaults
    task = tasks.setup_task(cfg.task)
    with pytest.raises(DistilledEmbeddingError, match="decoder_normalize_before|activation_fn"):
        task.build_model(cfg.model)


# ----------------------------------------------------------------------------- bad inputs (CLI)


def assert_one_error_line(result, *words):
    output = combined_output(result)
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1, result.stderr[-3000:]
    assert error_lines[0].startswith("fairseq-train: error: "), error_lines[0]
    for word in words:
        assert word in error_lines[0], error_lines[0]
    return error_lines[0]


def test_missing_teacher_file_is_one_error_line(lm_data_bin, tmp_path):
    result = run_fairseq(
        "train", *student_args(lm_data_bin, tmp_path / "missing.pt", tmp_path / "ckpt",
                               "--embedding-compression", "4"),
        check=False, timeout=300,
    )
    assert_one_error_line(result, "--teacher-path", "no such file")
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())


def test_dictionary_size_mismatch_is_one_error_line(spm_corpus, lm_data_bin, lm_teacher, tmp_path):
    half = str((vocabulary_size(lm_data_bin) - 4) // 2)  # real or generated corpus alike
    smaller = preprocess_english(spm_corpus, tmp_path / "small-bin", "--nwordssrc", half)
    result = run_fairseq(
        "train", *student_args(smaller, lm_teacher, tmp_path / "ckpt", "--embedding-compression",
                               "4"),
        check=False, timeout=300,
    )
    line = assert_one_error_line(result, "--teacher-path", "dictionary")
    assert f"has {vocabulary_size(smaller)}" in line


def test_rank_not_below_dimension_is_one_error_line(lm_data_bin, lm_teacher, tmp_path):
    result = run_fairseq(
        "train", *student_args(lm_data_bin, lm_teacher, tmp_path / "ckpt", "--embedding-rank",
                               "64"),
        check=False, timeout=300,
    )
    assert_one_error_line(result, "--embedding-rank 64", "would not compress")
