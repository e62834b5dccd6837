"""``export --embedding-bits``: real integer codes in the file, decoded by stock fairseq-generate
exactly as the fake-quantized (quantization-aware) student was trained and validated."""

import re

import pytest
import torch

from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.cli.quantized_export import quantize_embeddings
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from helpers import (
    PLUGIN_DIR,
    dictionary_size,
    hypotheses,
    loaded_model_and_batch,
    run_distilled_emb,
    run_fairseq,
    student_train_args,
)

GENERATE = ("--gen-subset", "valid", "--beam", "2", "--batch-size", "50", "--cpu",
            "--required-batch-size-multiple", "1", "--max-len-b", "10")
PREFIXES = ("encoder.embed_tokens", "decoder.embed_tokens", "decoder.output_projection.embedding")


def export(*args):
    """``fairseq-distilled-emb export args``, in-process (the console script's ``main``)."""
    return run_distilled_emb("export", *args)


def generate(data_bin, path, plugin=True):
    return hypotheses(run_fairseq("generate", data_bin, *(["--user-dir", PLUGIN_DIR] if plugin
                                                          else []), "--path", path,
                                  *GENERATE).stdout)


@pytest.fixture(scope="module")
def qat_student(data_bin, tiny_teacher, tmp_path_factory):
    """A 4x student of the tiny teacher fine-tuned with f(U) fake-quantized to int4 throughout."""
    save_dir = tmp_path_factory.mktemp("qat-student")
    run_fairseq("train", *student_train_args(data_bin, tiny_teacher.best, save_dir, 6,
                                             "--embedding-bits", "4"))
    return save_dir / "checkpoint_last.pt"


def test_int4_factors_are_stored_as_packed_bytes_and_decode_as_trained(
        data_bin, qat_student, tmp_path):
    out = tmp_path / "student-int4.pt"
    result = export("--embedding-bits", "4", qat_student, out)
    assert result.returncode == 0, result.stderr[-2000:]
    model = torch.load(out, weights_only=True)["model"]
    vocabulary = dictionary_size(data_bin)
    rank = model["decoder.embed_tokens.code_projection"].shape[0]
    codes = [model[f"{prefix}.codes"] for prefix in PREFIXES]
    assert all(c.dtype == torch.uint8 and c.shape == (vocabulary, -(-rank // 2)) for c in codes)
    assert len({c.untyped_storage().data_ptr() for c in codes}) == 1  # tied: stored once
    assert model["decoder.embed_tokens.code_scales"].dtype == torch.float16
    # --fp16 halves the body, not W (f(U)·W cancels: fp16 W would undo what the codes keep)
    halved = tmp_path / "student-int4-fp16.pt"
    assert export("--fp16", "--embedding-bits", "4", qat_student, halved).returncode == 0
    assert torch.load(halved, weights_only=True)["model"][
        "decoder.embed_tokens.code_projection"].dtype == torch.float32
    assert model["decoder.embed_tokens.code_projection"].dtype == torch.float32
    assert not any(key.endswith((".U", ".W")) for key in model)
    # stock fairseq-generate with --user-dir decodes the codes as the fake-quantized model did
    assert generate(data_bin, out) == generate(data_bin, qat_student)
    # stats: the embedding's bytes as stored, against fp32 and fp16 E
    stats = run_distilled_emb("stats", out).stdout
    stored = vocabulary * (-(-rank // 2) + 4) + rank * 64 * 4 + 3 * 8  # + code_shape
    fp32 = vocabulary * 64 * 4
    assert re.search(r"^embedding bytes +(.+)$", stats, re.M)[1] == (
        f"{stored:,} ({fp32 / stored:.1f}x fewer than fp32 E, {fp32 / 2 / stored:.1f}x fewer "
        "than fp16 E)")
    assert re.search(r"^compressed +(.+)$", stats, re.M)[1] == f"rank={rank}, f(U) in int4 codes"


def test_the_exported_model_scores_a_batch_as_the_trained_one(data_bin, qat_student, tmp_path):
    out = tmp_path / "student-int4.pt"
    assert export("--embedding-bits", "4", qat_student, out).returncode == 0
    assert torch.allclose(batch_loss(qat_student), batch_loss(out), rtol=1e-6, atol=0)


def batch_loss(path, scale_format="fp16"):
    """The summed cross-entropy of the first valid batch, scored by ``path`` loaded as
    fairseq-generate loads it (its embedding's scales in ``scale_format``)."""
    model, task, batch = loaded_model_and_batch(path)
    assert model.decoder.embed_tokens.scale_format == scale_format
    with torch.no_grad():
        logits = model(**batch["net_input"])[0]
    return torch.nn.functional.cross_entropy(
        logits.view(-1, logits.size(-1)), batch["target"].view(-1),
        ignore_index=task.target_dictionary.pad(), reduction="sum")


def test_post_training_codes_of_a_dense_teacher_decode_as_their_dequantized_matrix(
        data_bin, tiny_teacher, tmp_path):
    codes, dense = tmp_path / "teacher-int4.pt", tmp_path / "teacher-int4-dense.pt"
    assert export("--embedding-bits", "4", tiny_teacher.best, codes).returncode == 0
    saved = load_checkpoint(codes)
    assert saved["cfg"]["model"]["embedding_factorization"] == "quantized"
    assert saved["model"]["decoder.embed_tokens.codes"].dtype == torch.uint8
    assert "decoder.embed_tokens.code_projection" not in saved["model"]
    # the codes, dequantized into a stock dense checkpoint, translate as the codes do
    assert export("--dense", codes, dense).returncode == 0
    assert generate(data_bin, codes) == generate(data_bin, dense, plugin=False)


def test_int8_body_stores_every_layer_linear_as_int8_and_scores_close_to_the_float_body(
        data_bin, qat_student, tmp_path):
    from fairseq_distilled_emb.modules.int8_linear import Int8Linear

    floating, integer = tmp_path / "float-body.pt", tmp_path / "int8-body.pt"
    assert export("--embedding-bits", "4", qat_student, floating).returncode == 0
    result = export("--embedding-bits", "4", "--int8-body", qat_student, integer)
    assert result.returncode == 0, result.stderr[-2000:]
    model = torch.load(integer, weights_only=True)["model"]
    layer_weights = [k for k, v in torch.load(floating, weights_only=True)["model"].items()
                     if ".layers." in k and k.endswith(".weight") and v.dim() == 2]
    assert len(layer_weights) == 2 * (4 + 2) + 2 * (4 + 4 + 2)  # tiny: 2+2 layers
    for key in layer_weights:
        prefix = key[: -len(".weight")]
        assert key not in model and model[f"{prefix}.weight_codes"].dtype == torch.int8
        assert model[f"{prefix}.weight_scales"].dtype == torch.float32
    losses = []
    for path in (floating, integer):
        model, task, batch = loaded_model_and_batch(path)
        linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
        assert len(linears) == (len(layer_weights) if path == integer else 0)
        with torch.no_grad():
            logits = model(**batch["net_input"])[0]
        losses.append(torch.nn.functional.cross_entropy(
            logits.view(-1, logits.size(-1)), batch["target"].view(-1),
            ignore_index=task.target_dictionary.pad()).item())
    assert losses[1] != losses[0] and abs(losses[1] - losses[0]) < 0.01 * losses[0]
    assert "\nH-" in run_fairseq("generate", data_bin, "--user-dir", PLUGIN_DIR, "--path",
                                 integer, *GENERATE).stdout


def test_a_student_fake_quantized_with_log8_scales_exports_them_and_scores_as_trained(
        data_bin, qat_student, tmp_path):
    """1-byte row scales (``--embedding-scale-format log8``): the format the student was
    fake-quantized with is the one export stores by default, and the file scores as it did."""
    state = load_checkpoint(qat_student)
    state["cfg"]["model"].embedding_scale_format = "log8"  # as if trained with the flag
    student = tmp_path / "student-log8.pt"
    torch.save(state, student)
    out = tmp_path / "student-int4-log8.pt"
    result = export("--embedding-bits", "4", student, out)
    assert result.returncode == 0, result.stderr[-2000:]
    model = load_checkpoint(out)["model"]
    assert model["decoder.embed_tokens.code_scales"].dtype == torch.uint8
    assert model["decoder.embed_tokens.code_scale_unit"].shape == (1,)
    assert torch.allclose(batch_loss(student, "log8"), batch_loss(out, "log8"), rtol=1e-6, atol=0)
    stats = run_distilled_emb("stats", out).stdout
    vocabulary = dictionary_size(data_bin)
    rank = model["decoder.embed_tokens.code_projection"].shape[0]
    stored = vocabulary * (-(-rank // 2) + 3) + rank * 64 * 4 + 4 + 3 * 8  # + unit, code_shape
    assert re.search(r"^embedding bytes +([\d,]+) ", stats, re.M)[1] == f"{stored:,}"
    assert re.search(r"^compressed +(.+)$", stats, re.M)[1] == (
        f"rank={rank}, f(U) in int4 codes, 1-byte log scales")


def test_two_code_widths_and_fp16_w_are_stored_as_such_and_decode_as_their_matrix(
        data_bin, qat_student, tmp_path):
    """``--embedding-tail-bits 2 --embedding-head-rows K --embedding-w-fp16``: the first K rows
    (fairseq's most frequent words) in int4, the rest in int2, W in fp16; stock fairseq-generate
    decodes the file exactly as the dense matrix those numbers stand for."""
    vocabulary = dictionary_size(data_bin)
    head = vocabulary // 3
    out, dense = tmp_path / "student-int4-int2.pt", tmp_path / "student-int4-int2-dense.pt"
    result = export("--embedding-bits", "4", "--embedding-tail-bits", "2", "--embedding-head-rows",
                    head, "--embedding-w-fp16", qat_student, out)
    assert result.returncode == 0, result.stderr[-2000:]
    model = load_checkpoint(out)["model"]
    rank = model["decoder.embed_tokens.code_projection"].shape[0]
    assert model["decoder.embed_tokens.codes"].shape == (head, -(-rank * 4 // 8))
    assert model["decoder.embed_tokens.tail_codes"].shape == (vocabulary - head, -(-rank * 2 // 8))
    assert model["decoder.embed_tokens.tail_codes"].dtype == torch.uint8
    assert model["decoder.embed_tokens.code_projection"].dtype == torch.float16
    stats = run_distilled_emb("stats", out).stdout
    stored = (head * -(-rank * 4 // 8) + (vocabulary - head) * -(-rank * 2 // 8)
              + vocabulary * 4 + rank * 64 * 2 + 3 * 8 + 2 * 8)  # + code_shape, tail_shape
    assert re.search(r"^embedding bytes +([\d,]+) ", stats, re.M)[1] == f"{stored:,}"
    assert re.search(r"^compressed +(.+)$", stats, re.M)[1] == (
        f"rank={rank}, f(U) in int4 codes (rows from {head}: int2)")
    assert export("--dense", out, dense).returncode == 0
    assert generate(data_bin, out) == generate(data_bin, dense, plugin=False)


@pytest.mark.parametrize("flags,message", [
    (("--embedding-tail-bits", "3"), "--embedding-tail-bits 3 needs --embedding-bits B (the "
     "tail's code width)"),
    (("--embedding-w-fp16",), "--embedding-w-fp16 needs --embedding-bits B (W beside the codes)"),
    (("--dense", "--embedding-tail-bits", "3"), "--embedding-tail-bits/--embedding-w-fp16 set how "
     "integer codes are stored; --dense writes a stock float embedding: drop them"),
    (("--embedding-bits", "4", "--embedding-tail-bits", "3"), "--embedding-tail-bits and "
     "--embedding-head-rows go together: the first K rows keep --embedding-bits, the rest get "
     "the tail's width"),
    (("--embedding-bits", "3", "--embedding-tail-bits", "3", "--embedding-head-rows", "10"),
     "--embedding-tail-bits 3 must be below --embedding-bits 3 (the tail holds the rarest words)"),
])
def test_a_bad_code_split_is_one_error_line_and_writes_nothing(qat_student, tmp_path, flags,
                                                               message):
    out = tmp_path / "never.pt"
    result = export(*flags, qat_student, out)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"fairseq-distilled-emb export: error: {message}"]
    assert not out.exists()


def test_w_fp16_needs_a_low_rank_embedding(tiny_teacher, tmp_path):
    out = tmp_path / "never.pt"
    result = export("--embedding-bits", "4", "--embedding-w-fp16", tiny_teacher.best, out)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "fairseq-distilled-emb export: error: --embedding-w-fp16: this checkpoint's embedding is "
        "dense (no W); drop the flag"]
    assert not out.exists()


def dense_head_state(prefixes_ranks):
    """A saved model state with one dense-head embedding (K=100 of V=1,000, d=64) per prefix, of
    the given tail rank, and its model config."""
    from fairseq_distilled_emb.modules import DenseHeadEmbedding

    state = {}
    for prefix, rank in prefixes_ranks:
        module = DenseHeadEmbedding(1000, 64, head_rows=100, rank=rank, padding_idx=1)
        state.update({f"{prefix}.{key}": value for key, value in module.state_dict().items()})
    return state, {"arch": "distilled_transformer", "embedding_factorization": "dense-head",
                   "embedding_dense_rows": 100}


@pytest.mark.parametrize("flags,message", [
    (dict(tail_bits=3, head_rows=100), "--embedding-tail-bits: a dense-head embedding's split is "
     "already its own (dense head, low-rank tail), both stored in --embedding-bits codes; drop "
     "--embedding-tail-bits and --embedding-head-rows"),
    (dict(head_rows=100), "--embedding-head-rows: a dense-head embedding's split is already its "
     "own (dense head, low-rank tail), both stored in --embedding-bits codes; drop "
     "--embedding-tail-bits and --embedding-head-rows"),
])
def test_a_dense_head_split_flag_is_refused_not_ignored(flags, message):
    state, cfg = dense_head_state([("decoder.embed_tokens", 8)])
    with pytest.raises(DistilledEmbeddingError) as refused:
        quantize_embeddings(state, cfg, 4, **flags)
    assert str(refused.value) == message
    assert cfg["embedding_factorization"] == "dense-head"  # the config is left as it was


def test_embeddings_of_different_sizes_in_one_model_are_refused():
    """The quantized model config records one --embedding-rank: an unshared encoder and decoder
    embedding of different tail ranks would load with the wrong shapes."""
    state, cfg = dense_head_state([("encoder.embed_tokens", 8), ("decoder.embed_tokens", 6)])
    with pytest.raises(DistilledEmbeddingError) as refused:
        quantize_embeddings(state, cfg, 8)
    assert str(refused.value) == (
        "--embedding-bits: this model's embeddings are factorized at different sizes (1000, 64, "
        "dense rows=100, tail rank=6, int8 codes, padding_idx=None; 1000, 64, dense rows=100, "
        "tail rank=8, int8 codes, padding_idx=None), and a quantized model records one; train "
        "the student with --embedding-rank (the same for every embedding) or "
        "--share-all-embeddings")
    same, cfg = dense_head_state([("encoder.embed_tokens", 8), ("decoder.embed_tokens", 8)])
    quantized = quantize_embeddings(same, cfg, 8)  # two unshared embeddings of one size: fine
    assert quantized["encoder.embed_tokens.tail.codes"].shape == (900, 8)
    assert (cfg["embedding_factorization"], cfg["embedding_rank"], cfg["embedding_bits"]) == (
        "quantized-dense-head", 8, 8)


def test_unshared_embeddings_of_one_rank_and_two_vocabularies_are_quantized():
    """Only the rank is recorded in the config; each vocabulary size comes from its dictionary, so
    an encoder and a decoder embedding of different sizes but one rank export as before."""
    from fairseq_distilled_emb.modules import FactorizedEmbedding

    state = {}
    for prefix, vocab in (("encoder.embed_tokens", 1000), ("decoder.embed_tokens", 800)):
        module = FactorizedEmbedding(vocab, 64, 8, padding_idx=1)
        state.update({f"{prefix}.{key}": value for key, value in module.state_dict().items()})
    cfg = {"arch": "distilled_transformer", "embedding_factorization": "low-rank"}
    quantized = quantize_embeddings(state, cfg, 8)
    assert quantized["encoder.embed_tokens.codes"].shape == (1000, 8)
    assert quantized["decoder.embed_tokens.codes"].shape == (800, 8)
    assert (cfg["embedding_factorization"], cfg["embedding_rank"]) == ("quantized", 8)
