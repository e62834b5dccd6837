"""The language-model recipe's adaptive-input baseline (Baevski & Auli 2019, stock fairseq
``--adaptive-input`` with a tied ``--adaptive-softmax``): its embedding parameters as fairseq builds
them, and the cutoffs whose count matches a compressed student's, so the row is compared at equal
embedding bytes (both store fp32).

fairseq's ``AdaptiveInput`` splits the frequency-sorted vocabulary at the cutoffs into bands; band i
is an embedding of width d/factor^i followed by a bias-free d/factor^i → d projection (band 0 too).
With ``--tie-adaptive-weights --tie-adaptive-proj`` the adaptive softmax reuses every band's table
and projection and adds only its head's cluster logits: one d-vector per tail band.
"""

from typing import List, Sequence, Tuple

#: the tail band holds this many times the head's words (Baevski & Auli's WikiText-103 cutoffs
#: 20k/60k of 267k keep the same 1:2 head-to-middle proportion)
MIDDLE_BAND = 3
#: the fewest words of the head band (fairseq gives every band's table the padding index 1)
MIN_HEAD = 8
#: band-width divisors tried, smallest first: fairseq's default 4, then coarser ones that reach
#: the higher compressions 4 cannot
FACTORS = (4, 8, 16)


def adaptive_embedding_params(vocab: int, dim: int, cutoffs: Sequence[int], factor: int) -> int:
    """Parameters of the tied adaptive input + adaptive softmax of a ``dim``-wide LM."""
    bounds = [0, *cutoffs, vocab]
    params = 0
    for band in range(len(bounds) - 1):
        width = int(dim // (factor ** band))
        params += (bounds[band + 1] - bounds[band]) * width + width * dim
    return params + len(cutoffs) * dim  # the head's cluster logits


def adaptive_flags(cutoffs: Sequence[int], factor: int) -> List[str]:
    """The stock fairseq flags of a tied adaptive input/softmax with these bands."""
    joined = ",".join(str(cutoff) for cutoff in cutoffs)
    return ["--adaptive-input", "--adaptive-input-factor", str(factor),
            "--adaptive-input-cutoff", joined, "--adaptive-softmax-cutoff", joined,
            "--adaptive-softmax-factor", str(factor), "--adaptive-softmax-dropout", "0",
            "--tie-adaptive-weights", "--tie-adaptive-proj"]


def matching_adaptive_cutoffs(vocab: int, dim: int, target_params: int) -> Tuple[List[int], int]:
    """(cutoffs, factor) whose embedding comes closest to ``target_params``: the smallest factor
    of ``FACTORS`` that can get there, two cutoffs [c, 3c], and the head size c ≥ ``MIN_HEAD``
    found by bisection (the count grows with c). The caller checks how close it came: a target
    below what the coarsest bands need cannot be met."""
    def params(head: int, factor: int) -> int:
        return adaptive_embedding_params(vocab, dim, [head, MIDDLE_BAND * head], factor)

    limit = (vocab - 1) // MIDDLE_BAND
    for factor in FACTORS:
        if params(MIN_HEAD, factor) > target_params and factor != FACTORS[-1]:
            continue
        low, high = MIN_HEAD, limit
        while low < high:
            middle = (low + high) // 2
            if params(middle, factor) < target_params:
                low = middle + 1
            else:
                high = middle
        head = min((max(MIN_HEAD, low - 1), low),
                   key=lambda c: abs(params(c, factor) - target_params))
        return [head, MIDDLE_BAND * head], factor
    raise AssertionError("unreachable: the last factor always returns")
