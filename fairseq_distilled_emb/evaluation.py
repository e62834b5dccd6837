"""Scoring stock ``fairseq-generate`` output: align by sentence id, check the count, sacreBLEU.

fairseq-generate can drop sentences silently: fairseq 0.12's ``batch_by_size`` without ``--max-tokens``
rounds the last batch down to ``--required-batch-size-multiple`` (default 8), losing up to 7 sentences
(pass ``--required-batch-size-multiple 1``); ``--skip-invalid-size-inputs-valid-test`` drops long ones.
It also prints hypotheses in batch order, not input order. Scoring such output line-by-line against the
references gives a wrong BLEU without any warning, so hypotheses are aligned by their id and the count
is checked against the references before anything is scored.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import sacrebleu

from fairseq_distilled_emb.errors import DistilledEmbeddingError

_SPEED = re.compile(
    r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s "
    r"\(([\d.]+) sentences/s, ([\d.]+) tokens/s\)"
)


@dataclass
class GenerationScore:
    bleu: float
    signature: str
    sentences: int
    sentences_per_second: Optional[float]
    hypotheses: List[str]


def detokenized_hypotheses(generate_output: str, prefix: str = "D-") -> Dict[int, str]:
    """``D-<id>`` lines (hypotheses after ``--post-process``) keyed by sentence id; ``prefix="H-"``
    gives the hypotheses as dictionary tokens (sentencepiece pieces when not post-processed)."""
    hypotheses = {}
    for line in generate_output.splitlines():
        if line.startswith(prefix):
            head, _score, text = (line.split("\t", 2) + ["", ""])[:3]
            hypotheses[int(head[len(prefix):])] = text.strip()
    return hypotheses


def hypotheses_by_id(generate_output: str, expected: int, prefix: str = "D-") -> List[str]:
    """Exactly one hypothesis per input sentence ``0..expected-1``, in input order, or an error."""
    hypotheses = detokenized_hypotheses(generate_output, prefix)
    missing = sorted(set(range(expected)) - set(hypotheses))[:10]
    if missing or len(hypotheses) != expected:
        raise DistilledEmbeddingError(
            f"fairseq-generate returned {len(hypotheses)} hypotheses for {expected} "
            f"references (missing ids {missing}...): pass --required-batch-size-multiple 1 to "
            "fairseq-generate (fairseq 0.12 drops the last batch's remainder) and do not use "
            "--skip-invalid-size-inputs-valid-test when scoring"
        )
    return [hypotheses[i] for i in range(expected)]


def decode_speed(generate_output: str) -> Optional[float]:
    """Sentences per second from fairseq-generate's closing 'Translated N sentences' line."""
    match = _SPEED.search(generate_output)
    return float(match.group(4)) if match else None


def score_generation(generate_output: str, references: List[str]) -> GenerationScore:
    """Corpus sacreBLEU of the detokenized hypotheses against raw references, aligned by id."""
    ordered = hypotheses_by_id(generate_output, len(references))
    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score(ordered, [references])
    return GenerationScore(
        bleu=result.score,
        signature=str(metric.get_signature()),
        sentences=len(ordered),
        sentences_per_second=decode_speed(generate_output),
        hypotheses=ordered,
    )
