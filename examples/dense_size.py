"""The recipes' dense baselines: parameter counts of fairseq's dense transformer and transformer LM,
and the shape whose count matches a compressed student's, so a dense row is compared at equal size.
"""

from typing import Tuple


def transformer_params(vocab: int, dim: int, ffn: int, encoder_layers: int,
                             decoder_layers: int) -> int:
    """Parameters of fairseq's post-norm ``transformer`` with --share-all-embeddings.

    Sinusoidal positions have no parameters; each encoder layer holds self-attention (4 d×d + bias),
    two LayerNorms and the FFN; each decoder layer adds encoder attention and a third LayerNorm.
    """
    encoder_layer = 4 * (dim * dim + dim) + 2 * 2 * dim + 2 * dim * ffn + ffn + dim
    decoder_layer = 8 * (dim * dim + dim) + 3 * 2 * dim + 2 * dim * ffn + ffn + dim
    return vocab * dim + encoder_layers * encoder_layer + decoder_layers * decoder_layer


def matching_transformer_shape(vocab: int, layers: Tuple[int, int], heads: int,
                               target_params: int) -> Tuple[int, int]:
    """(width, FFN width) of a dense model with ``target_params`` parameters: the width (a multiple
    of 2·heads) whose 4× FFN model comes closest, then the FFN width that closes the rest of the gap
    (one FFN unit is ~2·d parameters per layer, so the match is within a few hundred)."""
    step = 2 * heads
    dim = min(
        range(step, 4096, step),
        key=lambda d: abs(transformer_params(vocab, d, 4 * d, *layers) - target_params),
    )
    without_ffn = transformer_params(vocab, dim, 0, *layers)
    per_ffn_unit = transformer_params(vocab, dim, 1, *layers) - without_ffn
    return dim, max(1, round((target_params - without_ffn) / per_ffn_unit))


def transformer_lm_params(vocab: int, dim: int, layers: int) -> int:
    """Parameters of a tied, pre-norm fairseq transformer_lm (FFN 4·d, final LayerNorm,
    sinusoidal positions): V·d + per layer attention 4(d²+d), FFN 8d²+5d, two LayerNorms 4d."""
    ffn = 4 * dim
    layer = 4 * (dim * dim + dim) + 2 * dim * ffn + ffn + dim + 4 * dim
    return vocab * dim + layers * layer + 2 * dim


def matching_lm_width(vocab: int, layers: int, heads: int, target_params: int) -> int:
    """The width (a multiple of 2·heads) of a dense LM closest to ``target_params``."""
    return min(range(2 * heads, 4096, 2 * heads),
               key=lambda dim: abs(transformer_lm_params(vocab, dim, layers) - target_params))
