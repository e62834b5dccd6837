"""The compressed-embedding flags, written once: the translation model adds them to its argparse
parser (fairseq's ``gen_parser_from_dataclass``) and the language model's dataclass config inherits
them, so both architectures accept the same flags with the same help."""

from dataclasses import dataclass, field, fields
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from fairseq_distilled_emb import factorization


@dataclass
class CompressedEmbeddingConfig(FairseqDataclass):
    embedding_rank: Optional[int] = field(
        default=None,
        metadata={"help": "rank r of the factorization E ≈ f(U)·W (U: V×r, W: r×d), or the TT "
                          "rank with --embedding-factorization tensor-train; mutually exclusive "
                          "with --embedding-compression"},
    )
    embedding_compression: Optional[float] = field(
        default=None,
        metadata={"help": "pick the largest rank whose compressed embedding has at most 1/X of "
                          "the dense embedding's V·d parameters (e.g. 8)"},
    )
    embedding_activation: ChoiceEnum(factorization.ACTIVATIONS) = field(
        default="relu",
        metadata={"help": "non-linearity f applied element-wise to U (default: relu, as in the "
                          "paper)"},
    )
    # a plain string, checked against the registry when the model is built: a kind registered
    # after this module was imported (a user's own module) is accepted too
    embedding_factorization: str = field(
        default="low-rank",
        metadata={"help": "how the embedding is compressed, a registered kind: 'low-rank' "
                          "(default), Distilled Embedding's f(U)·W; 'dense-head', the most frequent "
                          "words' rows dense and f(U)·W for the rest (--embedding-dense-rows); "
                          "'tensor-train', the TT-matrix "
                          "baseline of Khrulkov et al. (tensorly-torch: pip install -e "
                          ".[tensor-train]); 'quantized' and 'quantized-dense-head', integer codes "
                          "written by fairseq-distilled-emb export --embedding-bits (decoding "
                          "only)"},
    )
    embedding_dense_rows: Optional[int] = field(
        default=None,
        metadata={"help": "with --embedding-factorization dense-head: the first K rows of the "
                          "dictionary (the specials, then the most frequent words) stay dense; "
                          "--embedding-rank/--embedding-compression size the f(U)·W of the rest"},
    )
    embedding_bits: Optional[int] = field(
        default=None,
        metadata={"help": "with low-rank: quantization-aware fine-tuning, f(U) fake-quantized to "
                          "B-bit per-row codes in the forward pass (straight-through gradient), as "
                          "export --embedding-bits B stores it; with quantized*: the codes' width"},
    )
    embedding_scale_format: Optional[str] = field(
        default=None,
        metadata={"help": "with --embedding-bits: how each row's scale is stored, 'fp16' (2 "
                          "bytes, the default) or 'log8' (1 byte: a power of two in 1/16 steps; "
                          "a quarter fewer bytes at int3, rank 15); export stores what training "
                          "fake-quantized"},
    )
    embedding_bits_from_update: int = field(
        default=0,
        metadata={"help": "with --embedding-bits: fake-quantize from this update on (0: the "
                          "whole fine-tuning; N: only the updates after the first N)"},
    )
    embedding_tail_bits: Optional[int] = field(
        default=None,
        metadata={"help": "set by fairseq-distilled-emb export --embedding-tail-bits T: the rows "
                          "from --embedding-head-rows on (the rarest words) are T-bit codes "
                          "(decoding only)"},
    )
    embedding_head_rows: Optional[int] = field(
        default=None,
        metadata={"help": "set by fairseq-distilled-emb export --embedding-head-rows K: the first "
                          "K rows keep --embedding-bits (decoding only)"},
    )
    int8_body: bool = field(
        default=False,
        metadata={"help": "set by fairseq-distilled-emb export --int8-body: the encoder/decoder "
                          "layers' Linear weights are int8 codes (decoding only)"},
    )


#: the model-config keys these flags write (what a stock model's config must not carry)
COMPRESSED_EMBEDDING_KEYS = tuple(f.name for f in fields(CompressedEmbeddingConfig)
                                  if not f.name.startswith("_"))
