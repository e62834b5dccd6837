"""FactorizedEmbedding: lookups, the tied output path through the factors, padding, gradients."""

import pytest
import torch
import torch.nn.functional as F

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import FactorizedEmbedding, FactorizedOutputProjection

VOCAB, DIM, RANK, PAD = 50, 16, 6, 1


def make_embedding(activation="relu", seed=0, vocab=VOCAB, dim=DIM, rank=RANK, pad=PAD):
    torch.manual_seed(seed)
    return FactorizedEmbedding(vocab, dim, rank, pad, activation=activation)


def tokens_with_padding(batch=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCAB, (batch, length), generator=g)
    tokens[0, -2:] = PAD  # right padding
    tokens[2, :3] = PAD  # left padding (fairseq's source side)
    return tokens


def test_attributes_fairseq_reads():
    emb = make_embedding()
    assert (emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.rank) == (
        VOCAB, DIM, PAD, RANK,
    )
    assert emb.U.shape == (VOCAB, RANK) and emb.W.shape == (RANK, DIM)
    assert "rank=6" in repr(emb) and "activation=relu" in repr(emb)


@pytest.mark.parametrize("shape", [(4, 9), (1, 1), (2, 0)])
def test_forward_shapes(shape):
    emb = make_embedding()
    tokens = torch.randint(2, VOCAB, shape)
    out = emb(tokens)
    assert out.shape == (*shape, DIM)
    assert out.dtype == torch.float32


def test_forward_equals_materialized_lookup():
    emb = make_embedding()
    tokens = tokens_with_padding()
    dense = emb.materialize()
    assert dense.shape == (VOCAB, DIM)
    assert torch.allclose(emb(tokens), dense[tokens], atol=1e-6)
    assert torch.allclose(emb(tokens), F.embedding(tokens, dense), atol=1e-6)


def test_padding_rows_are_exactly_zero():
    emb = make_embedding()
    tokens = tokens_with_padding()
    out = emb(tokens)
    assert torch.count_nonzero(out[tokens.eq(PAD)]) == 0
    assert torch.count_nonzero(out[tokens.ne(PAD)].abs().sum(-1) == 0) == 0  # others are not
    assert torch.count_nonzero(emb.materialize()[PAD]) == 0
    assert torch.count_nonzero(emb.activated_codes()[PAD]) == 0
    assert torch.count_nonzero(emb.logits(torch.randn(2, 3, DIM))[..., PAD]) == 0


@pytest.mark.parametrize("activation", factorization.ACTIVATIONS)
def test_padding_stays_zero_after_optimizer_steps(activation):
    emb = make_embedding(activation)
    optimizer = torch.optim.Adam(emb.parameters(), lr=0.05)
    tokens = tokens_with_padding()
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, VOCAB, tokens.shape, generator=g)
    before = emb.materialize().detach().clone()
    for _ in range(5):
        optimizer.zero_grad()
        hidden = emb(tokens) + 0.1
        loss = F.cross_entropy(emb.logits(hidden).view(-1, VOCAB), targets.view(-1))
        loss.backward()
        optimizer.step()
    after = emb.materialize().detach()
    assert not torch.allclose(before, after)  # the steps did change the embedding
    assert torch.count_nonzero(after[PAD]) == 0
    assert torch.count_nonzero(emb(tokens)[tokens.eq(PAD)]) == 0
    assert torch.count_nonzero(emb.logits(torch.randn(4, DIM))[:, PAD]) == 0


def test_load_factors_keeps_padding_row_zero():
    emb = make_embedding()
    u, w = torch.randn(VOCAB, RANK).abs() + 0.1, torch.randn(RANK, DIM)
    emb.load_factors(u, w)
    assert torch.equal(emb.W.data, w)
    assert torch.equal(emb.U.data[PAD + 1 :], u[PAD + 1 :])
    assert torch.count_nonzero(emb.materialize()[PAD]) == 0
    assert torch.allclose(emb.materialize()[2:], torch.relu(u[2:]) @ w, atol=1e-5)


def test_no_padding_idx():
    emb = FactorizedEmbedding(VOCAB, DIM, RANK, None)
    tokens = torch.arange(VOCAB).unsqueeze(0)
    assert torch.allclose(emb(tokens)[0], emb.materialize(), atol=1e-6)


@pytest.mark.parametrize(
    "vocab, dim, rank", [(VOCAB, DIM, RANK), (1008, 64, 15), (1008, 64, 60), (10, 8, 1)]
)
def test_number_of_parameters(vocab, dim, rank):
    emb = FactorizedEmbedding(vocab, dim, rank, PAD)
    assert sum(p.numel() for p in emb.parameters()) == rank * (vocab + dim)
    assert emb.num_compressed_params() == rank * (vocab + dim)
    assert not any(p.shape == (vocab, dim) for p in emb.parameters())
    # the output projection adds nothing: it reuses the embedding's factors
    projection = FactorizedOutputProjection(emb)
    assert sum(p.numel() for p in projection.parameters()) == rank * (vocab + dim)


@pytest.mark.parametrize("activation", factorization.ACTIVATIONS)
def test_logits_equal_hidden_times_materialized_transpose(activation):
    emb = make_embedding(activation)
    hidden = torch.randn(3, 5, DIM)
    logits = emb.logits(hidden)
    assert logits.shape == (3, 5, VOCAB)
    assert torch.allclose(logits, hidden @ emb.materialize().t(), atol=1e-5)
    projection = FactorizedOutputProjection(emb)
    assert torch.equal(projection(hidden), logits)


@pytest.mark.parametrize("path", ["forward", "logits"])
def test_gradient_reaches_both_factors(path):
    emb = make_embedding()
    if path == "forward":
        loss = emb(tokens_with_padding()).pow(2).sum()
    else:
        loss = emb.logits(torch.randn(2, 4, DIM)).logsumexp(-1).sum()
    loss.backward()
    for name in ("U", "W"):
        grad = getattr(emb, name).grad
        assert grad is not None, f"no gradient reached {name} through {path}()"
        assert torch.count_nonzero(grad) > 0, f"zero gradient for {name} through {path}()"
    # and never to the padding row of U
    assert torch.count_nonzero(emb.U.grad[PAD]) == 0


def test_factors_are_kept_without_gradients_until_the_weights_change():
    """Scoring projects chunk after chunk through the same f(U): computed once under no_grad, and
    computed anew after a training step of fairseq's own Adam (which writes through ``p.data``:
    neither the pointer nor the version moves, the switch to eval() for validation drops it), a
    load, an in-place change and the switch to fake quantization."""
    from fairseq.optim.adam import Adam

    emb = make_embedding()
    emb.eval()
    with torch.no_grad():
        first = emb.factors()
        assert emb.factors()[0] is first[0] and emb.factors()[1] is first[1]
        codes = first[0].clone()
    optimizer = Adam(list(emb.parameters()), lr=0.1)
    emb.train()
    emb(tokens_with_padding()).pow(2).sum().backward()
    optimizer.step()  # fairseq's Adam: p.data.addcdiv_(...)
    emb.eval()  # what fairseq's validation does first
    with torch.no_grad():
        assert not torch.equal(emb.factors()[0], codes)
        torch.testing.assert_close(emb.factors()[0], emb.activated_codes(), rtol=0, atol=0)
        codes = emb.factors()[0].clone()
        emb.U.mul_(2.0)  # an in-place change through the parameter itself
        assert torch.equal(emb.factors()[0], codes * 2.0)
    emb.load_factors(emb.U.detach() * 3.0, emb.W.detach())
    with torch.no_grad():
        torch.testing.assert_close(emb.factors()[0], codes * 6.0, rtol=1e-6, atol=0)
    # with gradients the pair is built anew each call, so autograd sees U and W
    assert emb.factors()[0] is not emb.factors()[0] and emb.factors()[0].requires_grad
    quantized = FactorizedEmbedding(VOCAB, DIM, RANK, PAD, bits=4, bits_from_update=5)
    with torch.no_grad():
        plain = quantized.factors()[0]
        quantized.set_num_updates(5)
        assert not torch.equal(quantized.factors()[0], plain)


@pytest.mark.parametrize("activation", factorization.ACTIVATIONS)
def test_each_activation_is_applied_to_u_only(activation):
    emb = make_embedding(activation)
    tokens = tokens_with_padding()
    f = factorization.activation_fn(activation)
    expected = f(emb.U[tokens]) @ emb.W
    expected[tokens.eq(PAD)] = 0.0
    out = emb(tokens)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, expected, atol=1e-6)
    # f is applied before the product, not after it: f(U·W) would differ
    if activation != "linear":
        assert not torch.allclose(out, f(emb.U[tokens] @ emb.W) * tokens.ne(PAD).unsqueeze(-1))


def test_activations_give_different_embeddings():
    tokens = tokens_with_padding()
    outputs = {a: make_embedding(a, seed=0)(tokens) for a in factorization.ACTIVATIONS}
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outputs[a], outputs[b]), (a, b)


def test_default_init_has_dense_like_scale():
    # fairseq initialises a dense embedding with N(0, 1/d): the product should be on that scale
    emb = FactorizedEmbedding(2000, 64, 16, PAD)
    std = emb.materialize()[2:].std().item()
    assert 0.5 * 64**-0.5 < std < 2.0 * 64**-0.5


@pytest.mark.parametrize("rank", [0, -3, DIM, DIM + 5, 13])
def test_bad_rank_raises(rank):
    # V=50, d=16: rank 13 costs 13·66 = 858 > 800 = V·d
    with pytest.raises(DistilledEmbeddingError, match="--embedding-rank"):
        FactorizedEmbedding(VOCAB, DIM, rank, PAD)


def test_bad_activation_raises():
    with pytest.raises(DistilledEmbeddingError, match="--embedding-activation"):
        FactorizedEmbedding(VOCAB, DIM, RANK, PAD, activation="sigmoid")
