"""distilled_transformer_lm*: language models built through fairseq's own parser and task (tied
factorized input/output, logits through the factors, incremental decoding), the named architectures
against fairseq's dense ones, and the rejected adaptive-input/softmax flags. In-process only: the
CLI runs are in tests/tasks/test_language_modeling_reconstruction_init.py."""

import logging

import pytest
import torch
import torch.nn as nn

from fairseq.models import ARCH_MODEL_REGISTRY

from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.models.distilled_transformer import compressed_embeddings
from fairseq_distilled_emb.models.distilled_transformer_lm import DistilledTransformerLanguageModel
from fairseq_distilled_emb.modules import FactorizedEmbedding, FactorizedOutputProjection
from helpers import PLUGIN_DIR

VOCAB_WORDS = 300  # + 4 fairseq specials
TIED = ("--share-decoder-input-output-embed", "--embedding-compression", "4")


@pytest.fixture(scope="module")
def lm_dict_dir(tmp_path_factory):
    """A language-modeling data directory holding only ``dict.txt`` (enough to build a model)."""
    directory = tmp_path_factory.mktemp("lm-dict")
    (directory / "dict.txt").write_text("".join(f"w{i} {1000 - i}\n" for i in range(VOCAB_WORDS)))
    return directory


def parse_lm_args(data_dir, *flags, arch="distilled_transformer_lm_tiny", user_dir=True):
    from fairseq import options

    parser = options.get_training_parser()
    return options.parse_args_and_arch(
        parser,
        input_args=[
            str(data_dir), *(["--user-dir", str(PLUGIN_DIR)] if user_dir else []),
            "--arch", arch, "--task", "language_modeling", "--cpu", *[str(f) for f in flags],
        ],
    )


def build_lm(data_dir, *flags, arch="distilled_transformer_lm_tiny", user_dir=True):
    """``(args, task, model)`` built in-process exactly as ``fairseq-train`` would build them."""
    from fairseq import tasks

    args = parse_lm_args(data_dir, *flags, arch=arch, user_dir=user_dir)
    task = tasks.setup_task(args)
    return args, task, task.build_model(args)


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tied_lm(lm_dict_dir):
    torch.manual_seed(0)
    return build_lm(lm_dict_dir, *TIED)


def test_registered(tied_lm):
    _args, task, model = tied_lm
    assert isinstance(model, DistilledTransformerLanguageModel)
    for arch in ("distilled_transformer_lm", "distilled_transformer_lm_tiny",
                 "distilled_transformer_lm_gpt", "distilled_transformer_lm_wiki103"):
        assert ARCH_MODEL_REGISTRY[arch] is DistilledTransformerLanguageModel


def test_tied_model_has_one_factorization_and_no_dense_vocabulary_matrix(tied_lm):
    _args, task, model = tied_lm
    vocab, dim = len(task.source_dictionary), 64
    embedding = model.decoder.embed_tokens
    assert isinstance(embedding, FactorizedEmbedding)
    assert (embedding.num_embeddings, embedding.embedding_dim) == (vocab, dim)
    assert isinstance(model.decoder.output_projection, FactorizedOutputProjection)
    assert model.decoder.output_projection.embedding is embedding
    assert compressed_embeddings(model) == [embedding]
    for name, module in model.named_modules():
        assert not isinstance(module, nn.Embedding), name
        if isinstance(module, nn.Linear):
            assert module.out_features != vocab, f"{name} is a dense d→V output layer"
    for name, parameter in model.named_parameters():
        assert tuple(parameter.shape) not in {(vocab, dim), (dim, vocab)}, name


def test_parameter_count_is_dense_lm_minus_embedding_plus_factors(tied_lm, lm_dict_dir):
    _args, task, model = tied_lm
    _dense_args, _dense_task, dense = build_lm(
        lm_dict_dir, "--share-decoder-input-output-embed", arch="transformer_lm_gpt2_tiny",
        user_dir=False,
    )
    vocab, dim, rank = len(task.source_dictionary), 64, model.decoder.embed_tokens.rank
    assert vocab * dim / (rank * (vocab + dim)) >= 4  # --embedding-compression 4
    assert num_params(model) == num_params(dense) - vocab * dim + rank * (vocab + dim)


def random_tokens(task, shape, seed):
    dictionary = task.source_dictionary
    return torch.randint(dictionary.nspecial, len(dictionary), shape,
                         generator=torch.Generator().manual_seed(seed))


def test_logits_go_through_the_factors(tied_lm):
    """forward returns the hidden states; get_normalized_probs projects them through the factors
    (fairseq's adaptive-softmax convention, so fairseq-eval-lm --softmax-batch never holds T×V)."""
    _args, task, model = tied_lm
    model.eval()
    tokens = random_tokens(task, (2, 6), seed=1)
    with torch.no_grad():
        net_output = model(tokens)
        features, _ = model.decoder.extract_features(tokens, encoder_out=None)
        log_probs = model.get_normalized_probs(net_output, log_probs=True)
        logits = model.decoder.output_logits(net_output)
        expected = features @ model.decoder.embed_tokens.materialize().t()
    assert net_output[0].shape == (2, 6, 64) and torch.equal(net_output[0], features)
    assert log_probs.shape == logits.shape == (2, 6, len(task.source_dictionary))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_probs, torch.log_softmax(expected, dim=-1), rtol=1e-4,
                               atol=1e-5)
    # what fairseq-eval-lm --softmax-batch 4 does: normalize 4 flattened positions at a time
    flat = net_output[0].reshape(1, -1, 64)
    chunks = [model.get_normalized_probs((flat[:, s : s + 4],) + net_output[1:], log_probs=True)
              for s in range(0, 12, 4)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), log_probs.reshape(1, 12, -1),
                               rtol=0, atol=1e-6)


def test_incremental_decoding_matches_full_forward(tied_lm):
    """What fairseq-generate/-interactive sampling runs (one token at a time with cached keys and
    values) gives the full forward pass's logits."""
    _args, task, model = tied_lm
    model.eval()
    tokens = random_tokens(task, (2, 5), seed=2)
    with torch.no_grad():
        full = model.decoder.output_logits(model(tokens))
        state = {}
        steps = [model.decoder.output_logits(model.decoder(tokens[:, : t + 1],
                                                           incremental_state=state))
                 for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_untied_model_factorizes_the_input_only_and_warns(lm_dict_dir, caplog):
    with caplog.at_level(logging.WARNING):
        _args, task, model = build_lm(lm_dict_dir, "--embedding-compression", "4")
    assert isinstance(model.decoder.embed_tokens, FactorizedEmbedding)
    assert isinstance(model.decoder.output_projection, nn.Linear)
    assert model.decoder.output_projection.weight.shape == (len(task.source_dictionary), 64)
    assert not model.decoder.defers_output_projection  # an untied forward returns the logits
    assert "without --share-decoder-input-output-embed" in caplog.text


def test_parameter_summary_line_is_logged(lm_dict_dir, caplog):
    with caplog.at_level(logging.INFO):
        _args, task, model = build_lm(lm_dict_dir, *TIED)
    lines = [r.getMessage() for r in caplog.records if "factorized embedding:" in r.getMessage()]
    assert len(lines) == 1, lines
    rank = model.decoder.embed_tokens.rank
    assert f"V={len(task.source_dictionary)} d=64 rank={rank}" in lines[0]
    assert f"total model params {num_params(model):,}" in lines[0]


# ----------------------------------------------------------------------------- architectures


def model_fields(args, names):
    return {name: getattr(args, name, None) for name in names}


SHAPE_FIELDS = (
    "decoder_embed_dim", "decoder_input_dim", "decoder_output_dim", "decoder_ffn_embed_dim",
    "decoder_layers", "decoder_attention_heads", "decoder_normalize_before", "activation_fn",
    "dropout", "attention_dropout", "no_decoder_final_norm", "share_decoder_input_output_embed",
)


@pytest.mark.parametrize(
    "arch, dense_arch",
    [("distilled_transformer_lm_tiny", "transformer_lm_gpt2_tiny"),
     ("distilled_transformer_lm_gpt", "transformer_lm_gpt")],
)
def test_named_architecture_matches_dense_fairseq_arch(lm_dict_dir, arch, dense_arch):
    ours = parse_lm_args(lm_dict_dir, *TIED, arch=arch)
    dense = parse_lm_args(lm_dict_dir, "--share-decoder-input-output-embed", arch=dense_arch,
                          user_dir=False)
    assert model_fields(ours, SHAPE_FIELDS) == model_fields(dense, SHAPE_FIELDS)
    assert ours.embedding_activation == "relu"


def test_base_arch_matches_stock_transformer_lm_module_for_module(lm_dict_dir):
    """``--arch distilled_transformer_lm`` is fairseq's ``--arch transformer_lm`` (its dataclass
    defaults: post-norm, 512-dim input/output) given the same flags; only the embedding differs."""
    flags = ("--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128", "--decoder-layers", "2",
             "--decoder-attention-heads", "2", "--decoder-input-dim", "64",
             "--decoder-output-dim", "64", "--share-decoder-input-output-embed")
    _a, _t, ours = build_lm(lm_dict_dir, *flags, "--embedding-compression", "4",
                            arch="distilled_transformer_lm")
    _b, _u, dense = build_lm(lm_dict_dir, *flags, arch="transformer_lm", user_dir=False)
    factor_keys = {k for k in ours.state_dict() if k.endswith((".U", ".W"))}
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items() if k not in factor_keys}
    dense_shapes = {k: v.shape for k, v in dense.state_dict().items()
                    if k not in ("decoder.embed_tokens.weight", "decoder.output_projection.weight")}
    assert ours_shapes == dense_shapes
    assert ours.decoder.layers[0].normalize_before is dense.decoder.layers[0].normalize_before


def test_wiki103_arch_is_fairseqs_shape_with_a_tied_factorized_embedding(lm_dict_dir):
    ours = parse_lm_args(lm_dict_dir, "--embedding-compression", "8",
                         arch="distilled_transformer_lm_wiki103")
    dense = parse_lm_args(lm_dict_dir, arch="transformer_lm_wiki103", user_dir=False)
    shape = ("decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers",
             "decoder_attention_heads", "dropout", "attention_dropout", "activation_dropout",
             "no_decoder_final_norm", "decoder_normalize_before")
    assert model_fields(ours, shape) == model_fields(dense, shape)
    assert (ours.decoder_layers, ours.decoder_embed_dim) == (16, 1024)
    assert dense.adaptive_input and dense.adaptive_softmax_cutoff  # fairseq's uses them...
    assert ours.adaptive_input is False and ours.adaptive_softmax_cutoff is None  # ...ours not
    assert ours.tie_adaptive_weights is False and ours.adaptive_input_cutoff is None
    assert ours.share_decoder_input_output_embed is True


# ----------------------------------------------------------------------------- rejected flags


@pytest.mark.parametrize(
    "flags, named",
    [
        (("--adaptive-input",), "--adaptive-input"),
        (("--adaptive-softmax-cutoff", "100,200"), "--adaptive-softmax-cutoff"),
        (("--character-embeddings",), "--character-embeddings"),
        (("--embedding-rank", "64"), "--embedding-rank 64"),  # rank >= d = 64: no compression
        ((), "--embedding-rank R or --embedding-compression X"),
    ],
)
def test_bad_flags_raise_naming_the_flag(lm_dict_dir, flags, named):
    extra = () if "--embedding-rank" in flags or not flags else ("--embedding-compression", "4")
    with pytest.raises(DistilledEmbeddingError, match=named.replace("+", r"\+")):
        build_lm(lm_dict_dir, "--share-decoder-input-output-embed", *flags, *extra)


def test_wiki103_still_rejects_an_explicit_adaptive_softmax(lm_dict_dir):
    with pytest.raises(DistilledEmbeddingError, match="--adaptive-softmax-cutoff"):
        build_lm(lm_dict_dir, "--embedding-compression", "8", "--adaptive-softmax-cutoff",
                 "100,200", "--decoder-layers", "1", arch="distilled_transformer_lm_wiki103")


def test_dense_export_of_a_wiki103_student_builds_fairseqs_model_without_adaptive_softmax(
    lm_dict_dir,
):
    """``fairseq-distilled-emb export --dense`` points an LM's saved config at ``transformer_lm``:
    re-running ``transformer_lm_wiki103``'s arch function on load would add adaptive softmax."""
    from fairseq import models, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    from fairseq_distilled_emb.cli.export import dense_model_config

    small = ("--decoder-layers", "1", "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
             "--decoder-attention-heads", "1", "--embedding-compression", "4")
    cfg = convert_namespace_to_omegaconf(
        parse_lm_args(lm_dict_dir, *small, arch="distilled_transformer_lm_wiki103")
    )
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    dense_model_config(model_cfg)
    assert model_cfg["_name"] == "transformer_lm"
    task = tasks.setup_task(cfg.task)
    dense = models.build_model(OmegaConf.create(model_cfg), task)
    assert dense.decoder.adaptive_softmax is None
    assert dense.decoder.output_projection.weight is dense.decoder.embed_tokens.weight
    assert dense.decoder.embed_tokens.weight.shape == (len(task.source_dictionary), 64)


def embedding_flag_help(data_dir, arch, task):
    """``{flag: help}`` of the compressed-embedding flags fairseq's parser offers for ``arch``."""
    from fairseq import options

    from fairseq_distilled_emb.models.compressed_embedding_config import CompressedEmbeddingConfig

    parser = options.get_training_parser()
    options.parse_args_and_arch(parser, input_args=[
        str(data_dir), "--user-dir", str(PLUGIN_DIR), "--arch", arch, "--task", task, "--cpu"])
    names = {"--" + name.replace("_", "-") for name in CompressedEmbeddingConfig.__dataclass_fields__}
    return {flag: action.help for action in parser._actions for flag in action.option_strings
            if flag in names}


def test_translation_and_language_model_take_the_same_embedding_flags(lm_dict_dir, data_bin):
    translation = embedding_flag_help(data_bin, "distilled_transformer_tiny", "translation")
    language_model = embedding_flag_help(lm_dict_dir, "distilled_transformer_lm_tiny",
                                         "language_modeling")
    assert sorted(translation) == sorted(language_model) == [
        "--embedding-activation", "--embedding-bits", "--embedding-bits-from-update",
        "--embedding-compression", "--embedding-dense-rows", "--embedding-factorization",
        "--embedding-head-rows",
        "--embedding-rank", "--embedding-scale-format", "--embedding-tail-bits", "--int8-body"]
    assert translation == language_model  # the same help, written once


def test_language_model_with_a_tensor_train_embedding(lm_dict_dir):
    from fairseq_distilled_emb.modules import TensorTrainEmbedding

    _, _, model = build_lm(lm_dict_dir, "--share-decoder-input-output-embed",
                           "--embedding-factorization", "tensor-train", "--embedding-compression",
                           "4")
    (embedding,) = compressed_embeddings(model)
    assert isinstance(embedding, TensorTrainEmbedding)
    assert model.decoder.output_projection.embedding is embedding  # tied through the TT
    assert embedding.num_compressed_params() * 4 <= (VOCAB_WORDS + 4) * 64


def test_language_model_with_a_dense_head_embedding(lm_dict_dir):
    """The 20 most frequent rows dense, the rest f(U)·W: one module, tied, logits through it."""
    from fairseq_distilled_emb.modules import DenseHeadEmbedding

    torch.manual_seed(0)
    _, task, model = build_lm(lm_dict_dir, "--share-decoder-input-output-embed",
                              "--embedding-factorization", "dense-head", "--embedding-dense-rows",
                              "20", "--embedding-compression", "4")
    (embedding,) = compressed_embeddings(model)  # its low-rank tail is not a second embedding
    assert isinstance(embedding, DenseHeadEmbedding)
    assert model.decoder.output_projection.embedding is embedding
    assert (embedding.head_rows, embedding.rank) == (20, 10)  # 20·64 + 10·(284+64) ≤ 304·64/4
    model.eval()
    tokens = random_tokens(task, (2, 6), seed=2)
    with torch.no_grad():
        features = model(tokens)[0]
        log_probs = model.get_normalized_probs(model(tokens), log_probs=True)
        expected = torch.log_softmax(features @ embedding.materialize().t(), dim=-1)
    torch.testing.assert_close(log_probs, expected, rtol=1e-4, atol=1e-5)


def test_distillation_gets_logits_from_a_compressed_student_and_teacher(tied_lm):
    """The KD criterion's two projections: the student's forward output and a teacher's
    features_only output, both hidden states for a compressed LM, become V-way logits."""
    from fairseq_distilled_emb.criterions.label_smoothed_cross_entropy_with_distillation import (
        output_projection, student_output_logits)

    _args, task, model = tied_lm
    model.eval()
    tokens = random_tokens(task, (2, 4), seed=3)
    with torch.no_grad():
        features = model(tokens, features_only=True)[0]
        expected = features @ model.decoder.embed_tokens.materialize().t()
        torch.testing.assert_close(output_projection(model)(features), expected, rtol=1e-4,
                                   atol=1e-5)
        torch.testing.assert_close(student_output_logits(model, model(tokens)), expected,
                                   rtol=1e-4, atol=1e-5)
