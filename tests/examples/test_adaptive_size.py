"""The adaptive-input baseline's size: the formula against fairseq's own modules, and the cutoffs
that match the WikiText-2 students' embedding parameters (the recipe's wikitext2 rows)."""

import pytest
from fairseq.modules import AdaptiveInput, AdaptiveSoftmax

from examples import adaptive_size
from fairseq_distilled_emb import factorization

WIKITEXT2_VOCAB = 33280  # fairseq-preprocess's dictionary of WikiText-2's training words


def built_params(vocab: int, dim: int, cutoffs, factor: int) -> int:
    """Unique parameters of fairseq's tied AdaptiveInput + AdaptiveSoftmax, as TransformerDecoder
    builds them with --tie-adaptive-weights --tie-adaptive-proj."""
    embedding = AdaptiveInput(vocab, 1, dim, factor, dim, list(cutoffs), 0, 8)
    softmax = AdaptiveSoftmax(vocab, dim, list(cutoffs), 0.0, adaptive_inputs=embedding,
                              factor=factor, tie_proj=True)
    unique = {id(p): p.numel() for module in (embedding, softmax) for p in module.parameters()}
    return sum(unique.values())


@pytest.mark.parametrize("cutoffs,factor", [([100, 300], 4), ([957, 2871], 8), ([20, 60], 16)])
def test_formula_counts_what_fairseq_builds(cutoffs, factor):
    assert adaptive_size.adaptive_embedding_params(WIKITEXT2_VOCAB, 256, cutoffs, factor) == \
        built_params(WIKITEXT2_VOCAB, 256, cutoffs, factor)


@pytest.mark.parametrize("dim,compression,expected", [
    (256, 8, ([1252, 3756], 4)), (256, 16, ([957, 2871], 8)), (512, 8, ([1070, 3210], 4)),
])
def test_cutoffs_match_the_students_embedding_within_5_percent(dim, compression, expected):
    rank = factorization.rank_for_compression(WIKITEXT2_VOCAB, dim, compression)
    student = factorization.factorized_embedding_params(WIKITEXT2_VOCAB, dim, rank)
    cutoffs, factor = adaptive_size.matching_adaptive_cutoffs(WIKITEXT2_VOCAB, dim, student)
    assert (cutoffs, factor) == expected
    built = built_params(WIKITEXT2_VOCAB, dim, cutoffs, factor)
    assert abs(built / student - 1) < 0.05


def test_flags_are_the_stock_tied_adaptive_ones():
    assert adaptive_size.adaptive_flags([1252, 3756], 4) == [
        "--adaptive-input", "--adaptive-input-factor", "4", "--adaptive-input-cutoff", "1252,3756",
        "--adaptive-softmax-cutoff", "1252,3756", "--adaptive-softmax-factor", "4",
        "--adaptive-softmax-dropout", "0", "--tie-adaptive-weights", "--tie-adaptive-proj"]
