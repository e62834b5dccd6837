"""distilled_transformer*: models built through fairseq's own parser and task, sharing, logits,
incremental decoding, named architectures, flag errors (in-process and through fairseq-train)."""

import argparse

import pytest
import torch
import torch.nn as nn

from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.models.distilled_transformer import (
    DistilledTransformerModel,
    compressed_embeddings,
)
from fairseq_distilled_emb.modules import FactorizedEmbedding, FactorizedOutputProjection
from helpers import PLUGIN_DIR, build_model_from_flags, combined_output, run_fairseq

SHARE_ALL = ("--share-all-embeddings", "--embedding-compression", "4")
NAMED_ARCHS = [
    "distilled_transformer",
    "distilled_transformer_tiny",
    "distilled_transformer_iwslt_de_en",
    "distilled_transformer_wmt_en_de",
    "distilled_transformer_vaswani_wmt_en_de_big",
    "distilled_transformer_wmt_en_de_big",
]
EMBEDDING_FLAGS = {"embedding_rank", "embedding_compression", "embedding_activation",
                   "embedding_factorization", "embedding_dense_rows", "embedding_bits",
                   "embedding_bits_from_update", "embedding_scale_format", "embedding_tail_bits",
                   "embedding_head_rows", "int8_body"}


def num_params(model):
    return sum(p.numel() for p in model.parameters())  # shared parameters counted once


def assert_no_dense_vocabulary_matrix(model, vocab, dim):
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            assert module.num_embeddings != vocab, f"{name} is a dense V×d nn.Embedding"
        if isinstance(module, nn.Linear):
            assert module.out_features != vocab, f"{name} is a dense d→V output layer"
    for name, parameter in model.named_parameters():
        assert tuple(parameter.shape) not in {(vocab, dim), (dim, vocab)}, name


def random_batch(dictionary, batch=3, src_len=7, tgt_len=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    first = dictionary.nspecial
    src = torch.randint(first, len(dictionary), (batch, src_len), generator=g)
    src[:, -1] = dictionary.eos()
    src[0, :2] = dictionary.pad()  # left-padded, as fairseq batches the source
    lengths = src.ne(dictionary.pad()).sum(1)
    prev = torch.randint(first, len(dictionary), (batch, tgt_len), generator=g)
    prev[:, 0] = dictionary.eos()
    return src, lengths, prev


@pytest.fixture(scope="module")
def shared_model(data_bin):
    args, task, model = build_model_from_flags(data_bin, *SHARE_ALL)
    model.eval()
    return args, task, model


# ---------------------------------------------------------------------------- structure and sharing


def test_registered(shared_model):
    _, _, model = shared_model
    assert isinstance(model, DistilledTransformerModel)
    for arch in NAMED_ARCHS:
        assert ARCH_MODEL_REGISTRY[arch] is DistilledTransformerModel


def test_share_all_embeddings_uses_one_factorization(shared_model):
    args, task, model = shared_model
    vocab, dim = len(task.source_dictionary), args.encoder_embed_dim
    embedding = model.encoder.embed_tokens
    assert isinstance(embedding, FactorizedEmbedding)
    assert model.decoder.embed_tokens is embedding
    assert isinstance(model.decoder.output_projection, FactorizedOutputProjection)
    assert model.decoder.output_projection.embedding is embedding
    assert compressed_embeddings(model) == [embedding]
    assert (embedding.num_embeddings, embedding.embedding_dim) == (vocab, dim)
    assert embedding.padding_idx == task.source_dictionary.pad()
    # --embedding-compression 4 -> the largest rank within a quarter of V·d
    assert embedding.rank == (vocab * dim // 4) // (vocab + dim)
    assert_no_dense_vocabulary_matrix(model, vocab, dim)


def test_share_all_parameter_count_matches_dense_model_minus_embedding(shared_model, data_bin):
    args, task, model = shared_model
    _, _, dense = build_model_from_flags(
        data_bin, "--share-all-embeddings", arch="transformer_tiny"
    )
    vocab, dim = len(task.source_dictionary), args.encoder_embed_dim
    rank = model.encoder.embed_tokens.rank
    assert num_params(model) == num_params(dense) - vocab * dim + rank * (vocab + dim)


def test_share_decoder_input_output_only(data_bin):
    args, task, model = build_model_from_flags(
        data_bin, "--share-decoder-input-output-embed", "--embedding-rank", "8"
    )
    encoder_embedding, decoder_embedding = model.encoder.embed_tokens, model.decoder.embed_tokens
    assert isinstance(encoder_embedding, FactorizedEmbedding)
    assert isinstance(decoder_embedding, FactorizedEmbedding)
    assert encoder_embedding is not decoder_embedding
    assert encoder_embedding.U is not decoder_embedding.U
    assert model.decoder.output_projection.embedding is decoder_embedding
    assert {id(e) for e in compressed_embeddings(model)} == {
        id(encoder_embedding), id(decoder_embedding),
    }
    assert encoder_embedding.rank == decoder_embedding.rank == 8
    vocab, dim = len(task.target_dictionary), args.decoder_embed_dim
    assert_no_dense_vocabulary_matrix(model, vocab, dim)
    _, _, dense = build_model_from_flags(
        data_bin, "--share-decoder-input-output-embed", arch="transformer_tiny"
    )
    assert num_params(model) == num_params(dense) - 2 * vocab * dim + 2 * 8 * (vocab + dim)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "linear"])
def test_embedding_activation_flag(data_bin, activation):
    _, _, model = build_model_from_flags(data_bin, *SHARE_ALL, "--embedding-activation", activation)
    assert model.encoder.embed_tokens.activation == activation


def test_default_activation_is_relu(shared_model):
    assert shared_model[2].encoder.embed_tokens.activation == "relu"


# ----------------------------------------------------------------------------- computation


def test_decoder_logits_equal_materialized_computation(shared_model):
    _, task, model = shared_model
    src, lengths, prev = random_batch(task.source_dictionary)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths=lengths)
        features, _ = model.decoder(prev, encoder_out=encoder_out, features_only=True)
        logits = model.decoder.output_layer(features)
        full, _ = model(src, lengths, prev)
        dense = model.decoder.embed_tokens.materialize()
    assert logits.shape == (*prev.shape, len(task.target_dictionary))
    assert torch.allclose(logits, features @ dense.t(), atol=1e-5)
    assert torch.allclose(full, logits, atol=1e-6)
    probs = model.get_normalized_probs((full, None), log_probs=False)
    assert torch.allclose(probs.sum(-1), torch.ones(prev.shape), atol=1e-5)


def test_encoder_input_is_scaled_factorized_lookup(shared_model):
    """The encoder embeds tokens as sqrt(d)·f(U)[tokens]·W (+ positions), like a dense embedding."""
    args, task, model = shared_model
    src, lengths, _ = random_batch(task.source_dictionary)
    with torch.no_grad():
        embedded, raw = model.encoder.forward_embedding(src)
    scale = args.encoder_embed_dim**0.5
    assert model.encoder.embed_scale == pytest.approx(scale)
    # fairseq returns the scaled token embedding next to the final input (positions added)
    expected = scale * model.encoder.embed_tokens.materialize()[src]
    assert torch.allclose(raw, expected, atol=1e-5)
    assert torch.count_nonzero(raw[src.eq(task.source_dictionary.pad())]) == 0


def test_incremental_decoding_matches_full_forward(shared_model):
    _, task, model = shared_model
    src, lengths, prev = random_batch(task.source_dictionary, tgt_len=6, seed=3)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths=lengths)
        full, _ = model.decoder(prev, encoder_out=encoder_out)
        state = {}
        steps = [
            model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0]
            for t in range(prev.size(1))
        ]
    incremental = torch.cat(steps, dim=1)
    assert incremental.shape == full.shape
    assert torch.allclose(incremental, full, atol=1e-4)


def test_training_step_updates_the_shared_factors(data_bin):
    args, task, model = build_model_from_flags(data_bin, *SHARE_ALL, "--dropout", "0")
    model.train()
    src, lengths, prev = random_batch(task.source_dictionary, seed=5)
    target = torch.cat([prev[:, 1:], prev[:, :1]], dim=1)
    embedding = model.encoder.embed_tokens
    before = embedding.materialize().detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        logits, _ = model(src, lengths, prev)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1))
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < losses[0]
    after = embedding.materialize().detach()
    assert not torch.allclose(before, after)
    assert torch.count_nonzero(after[task.source_dictionary.pad()]) == 0


# ----------------------------------------------------------------------------- named architectures


def apply_arch(name, **preset):
    args = argparse.Namespace(**preset)
    ARCH_CONFIG_REGISTRY[name](args)
    return vars(args)


@pytest.mark.parametrize("arch", NAMED_ARCHS)
def test_named_architecture_matches_dense_fairseq_arch(arch):
    dense_name = arch[len("distilled_"):]
    distilled, dense = apply_arch(arch), apply_arch(dense_name)
    assert set(distilled) - set(dense) == EMBEDDING_FLAGS
    assert {k: v for k, v in distilled.items() if k not in EMBEDDING_FLAGS} == dense
    for side in ("encoder", "decoder"):
        for key in ("embed_dim", "ffn_embed_dim", "layers", "attention_heads"):
            assert distilled[f"{side}_{key}"] == dense[f"{side}_{key}"]
    # and user flags still win over the architecture's defaults
    overridden = apply_arch(arch, encoder_layers=3, embedding_rank=7)
    assert overridden["encoder_layers"] == 3 and overridden["embedding_rank"] == 7


@pytest.mark.parametrize(
    "arch, dim, ffn, layers, heads",
    [
        ("distilled_transformer_tiny", 64, 64, 2, 2),
        ("distilled_transformer", 512, 2048, 6, 8),
        ("distilled_transformer_iwslt_de_en", 512, 1024, 6, 4),
        ("distilled_transformer_vaswani_wmt_en_de_big", 1024, 4096, 6, 16),
    ],
)
def test_named_architecture_dimensions(arch, dim, ffn, layers, heads):
    args = apply_arch(arch)
    for side in ("encoder", "decoder"):
        assert args[f"{side}_embed_dim"] == dim
        assert args[f"{side}_ffn_embed_dim"] == ffn
        assert args[f"{side}_layers"] == layers
        assert args[f"{side}_attention_heads"] == heads


def test_parser_args_match_dense_arch(data_bin):
    """Through the full parser too: only --arch and the embedding flags differ."""
    from fairseq import options

    def parse(arch, *extra):
        parser = options.get_training_parser()
        return vars(options.parse_args_and_arch(parser, input_args=[
            str(data_bin), "--user-dir", str(PLUGIN_DIR), "--arch", arch, *extra,
        ]))

    distilled = parse("distilled_transformer_iwslt_de_en", "--embedding-rank", "16")
    dense = parse("transformer_iwslt_de_en")
    differing = {k for k in set(distilled) | set(dense) if distilled.get(k) != dense.get(k)}
    assert differing <= {"arch", "embedding_rank"} | EMBEDDING_FLAGS
    assert distilled["embedding_rank"] == 16


# ----------------------------------------------------------------------------- flag errors


@pytest.mark.parametrize(
    "flags, named",
    [
        (("--embedding-rank", "8", "--embedding-compression", "4"), "--embedding-rank"),
        (("--embedding-rank", "0"), "--embedding-rank 0"),
        (("--embedding-rank", "-2"), "--embedding-rank -2"),
        (("--embedding-rank", "64"), "--embedding-rank 64"),  # rank >= d = 64
        (("--embedding-rank", "61"), "--embedding-rank 61"),  # 61·(1008+64) > 1008·64
        ((), "--embedding-rank"),
        (("--embedding-compression", "1"), "--embedding-compression"),
        (("--embedding-compression", "500"), "--embedding-compression"),
    ],
)
def test_bad_flags_raise_naming_the_flag(data_bin, flags, named):
    with pytest.raises(DistilledEmbeddingError) as info:
        build_model_from_flags(data_bin, "--share-all-embeddings", *flags)
    assert named in str(info.value)


def test_both_flags_error_names_both(data_bin):
    with pytest.raises(DistilledEmbeddingError) as info:
        build_model_from_flags(
            data_bin, "--share-all-embeddings", "--embedding-rank", "8",
            "--embedding-compression", "4",
        )
    assert "--embedding-rank" in str(info.value) and "--embedding-compression" in str(info.value)


def test_pretrained_embed_path_is_rejected(data_bin, tmp_path):
    fake = tmp_path / "emb.txt"
    fake.write_text("2 64\n")
    with pytest.raises(DistilledEmbeddingError, match="--encoder-embed-path"):
        build_model_from_flags(data_bin, *SHARE_ALL, "--encoder-embed-path", fake)


# ----------------------------------------------------------------------------- the saved student


def test_checkpoint_has_factors_only_and_reloads_shared(tiny_student_checkpoint):
    import fairseq_distilled_emb  # noqa: F401  (torch.load compat)
    from fairseq import checkpoint_utils

    state = torch.load(tiny_student_checkpoint.best)
    weights = state["model"]
    vocab, rank = weights["encoder.embed_tokens.U"].shape
    dim = weights["encoder.embed_tokens.W"].shape[1]
    assert not [k for k, v in weights.items() if tuple(v.shape) in {(vocab, dim), (dim, vocab)}]
    for prefix in ("decoder.embed_tokens", "decoder.output_projection.embedding"):
        assert torch.equal(weights[f"{prefix}.U"], weights["encoder.embed_tokens.U"])
        assert torch.equal(weights[f"{prefix}.W"], weights["encoder.embed_tokens.W"])

    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
        [str(tiny_student_checkpoint.best)]
    )
    model = models[0]
    embedding = model.encoder.embed_tokens
    assert isinstance(embedding, FactorizedEmbedding)
    assert model.decoder.embed_tokens is embedding
    assert model.decoder.output_projection.embedding is embedding
    assert torch.equal(embedding.U.detach(), weights["encoder.embed_tokens.U"])
    assert torch.equal(embedding.W.detach(), weights["encoder.embed_tokens.W"])
