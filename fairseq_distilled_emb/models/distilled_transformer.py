"""``distilled_transformer``: fairseq's Transformer with a factorized (Distilled Embedding) embedding.

Only the builders change (as in fairseq's pointer_generator and linformer plugins): the embedding is a
:class:`FactorizedEmbedding` and the decoder's tied output projection goes through its factors. Every
named architecture calls the matching dense fairseq architecture, so a recipe swaps only ``--arch``.
"""

import argparse
import logging

from fairseq.models import register_model, register_model_architecture
from omegaconf import DictConfig, OmegaConf
from fairseq.models.transformer import TransformerDecoder, TransformerModel
from fairseq.models.transformer.transformer_legacy import (
    base_architecture,
    tiny_architecture,
    transformer_iwslt_de_en,
    transformer_vaswani_wmt_en_de_big,
    transformer_wmt_en_de,
    transformer_wmt_en_de_big,
)

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import (
    COMPRESSED_EMBEDDINGS,
    FactorizedEmbedding,
    FactorizedOutputProjection,
    TensorTrainEmbedding,
)
from fairseq_distilled_emb.modules.tensor_train_embedding import resolve_tensor_train_rank

logger = logging.getLogger(__name__)

EMBEDDING_FACTORIZATIONS = ("low-rank", "tensor-train")


def add_factorized_embedding_args(parser):
    """The flags every distilled architecture (translation and LM) shares."""
    parser.add_argument(
        "--embedding-rank", type=int, metavar="R",
        help="rank r of the factorization E ≈ f(U)·W (U: V×r, W: r×d); "
        "mutually exclusive with --embedding-compression",
    )
    parser.add_argument(
        "--embedding-compression", type=float, metavar="X",
        help="pick the largest rank whose factorized embedding has at most 1/X of the dense "
        "embedding's V·d parameters (e.g. 8)",
    )
    parser.add_argument(
        "--embedding-activation", choices=factorization.ACTIVATIONS,
        help="non-linearity f applied element-wise to U (default: relu, as in the paper)",
    )
    parser.add_argument(
        "--embedding-factorization", choices=EMBEDDING_FACTORIZATIONS,
        help="'low-rank' (default): Distilled Embedding's f(U)·W; 'tensor-train': the TT-matrix "
        "baseline of Khrulkov et al. (tensorly-torch, pip install -e .[tensor-train]), whose TT "
        "rank --embedding-rank/--embedding-compression then set",
    )


def build_factorized_embedding(args, dictionary, embed_dim):
    """The compressed embedding for ``dictionary`` from the factorization/rank flags in ``args``."""
    rank_flags = (getattr(args, "embedding_rank", None), getattr(args, "embedding_compression", None))
    if getattr(args, "embedding_factorization", None) == "tensor-train":
        if (getattr(args, "embedding_activation", None) or "relu") != "relu":
            raise DistilledEmbeddingError(
                "--embedding-activation applies to the low-rank factorization only; drop it with "
                "--embedding-factorization tensor-train"
            )
        rank = resolve_tensor_train_rank(len(dictionary), embed_dim, *rank_flags)
        return TensorTrainEmbedding(len(dictionary), embed_dim, rank, dictionary.pad())
    rank = factorization.resolve_rank(
        len(dictionary),
        embed_dim,
        getattr(args, "embedding_rank", None),
        getattr(args, "embedding_compression", None),
    )
    return FactorizedEmbedding(
        len(dictionary), embed_dim, rank, dictionary.pad(),
        activation=getattr(args, "embedding_activation", None) or "relu",
    )


def as_namespace(args):
    """A legacy model's config as an argparse Namespace.

    A checkpoint whose model config was saved as a plain dict comes back as a DictConfig, and
    ``TransformerConfig.from_namespace`` silently drops a DictConfig's keys it does not declare —
    ours (the rank flags) included. A Namespace keeps them.
    """
    if isinstance(args, DictConfig):
        return argparse.Namespace(**OmegaConf.to_container(args, resolve=True))
    return args


def factorized_embeddings(model):
    """The distinct compressed embedding modules of ``model`` (shared ones counted once)."""
    seen = {}
    for module in model.modules():
        if isinstance(module, COMPRESSED_EMBEDDINGS):
            seen[id(module)] = module
    return list(seen.values())


def log_parameter_summary(model):
    """One line per distinct embedding: dense vs. factorized parameters, ratio, model total."""
    total = sum(p.numel() for p in model.parameters())
    for embedding in factorized_embeddings(model):
        dense = factorization.dense_embedding_params(
            embedding.num_embeddings, embedding.embedding_dim
        )
        factorized = embedding.num_factorized_params()
        logger.info(
            f"factorized embedding: V={embedding.num_embeddings} d={embedding.embedding_dim} "
            f"rank={embedding.rank} | dense embedding params {dense:,} | factorized params "
            f"{factorized:,} | ratio {dense / factorized:.2f}x | total model params {total:,}"
        )


class DistilledTransformerDecoder(TransformerDecoder):
    """A Transformer decoder whose tied output projection computes logits through the factors."""

    def build_output_projection(self, args, dictionary, embed_tokens):
        if self.share_input_output_embed and isinstance(embed_tokens, COMPRESSED_EMBEDDINGS):
            self.output_projection = FactorizedOutputProjection(embed_tokens)
            return
        super().build_output_projection(args, dictionary, embed_tokens)


@register_model("distilled_transformer")
class DistilledTransformerModel(TransformerModel):
    """Transformer whose shared embedding is factorized as E ≈ f(U)·W (Distilled Embedding).

    With ``--share-all-embeddings`` the encoder input, decoder input and decoder output share ONE
    factorization; with ``--share-decoder-input-output-embed`` only, the decoder's input and output
    share one and the encoder gets its own.
    """

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_factorized_embedding_args(parser)

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(as_namespace(args), task)
        log_parameter_summary(model)
        return model

    @classmethod
    def build_embedding(cls, args, dictionary, embed_dim, path=None):
        if path:
            raise DistilledEmbeddingError(
                "--encoder-embed-path/--decoder-embed-path (pretrained text embeddings) cannot be "
                "used with a factorized embedding; initialise from a teacher checkpoint with "
                "--task translation_reconstruction_init --teacher-path instead"
            )
        return build_factorized_embedding(args, dictionary, embed_dim)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return DistilledTransformerDecoder(
            args, tgt_dict, embed_tokens, no_encoder_attn=getattr(args, "no_cross_attention", False)
        )


def _distilled_defaults(args):
    args.embedding_rank = getattr(args, "embedding_rank", None)
    args.embedding_compression = getattr(args, "embedding_compression", None)
    args.embedding_activation = getattr(args, "embedding_activation", "relu")
    args.embedding_factorization = getattr(args, "embedding_factorization", "low-rank")


@register_model_architecture("distilled_transformer", "distilled_transformer")
def distilled_transformer(args):
    _distilled_defaults(args)
    base_architecture(args)


@register_model_architecture("distilled_transformer", "distilled_transformer_tiny")
def distilled_transformer_tiny(args):
    """fairseq's ``transformer_tiny`` shape (d=64, 2+2 layers), for CPU tests."""
    _distilled_defaults(args)
    tiny_architecture(args)


@register_model_architecture("distilled_transformer", "distilled_transformer_iwslt_de_en")
def distilled_transformer_iwslt_de_en(args):
    _distilled_defaults(args)
    transformer_iwslt_de_en(args)


@register_model_architecture("distilled_transformer", "distilled_transformer_wmt_en_de")
def distilled_transformer_wmt_en_de(args):
    _distilled_defaults(args)
    transformer_wmt_en_de(args)


@register_model_architecture(
    "distilled_transformer", "distilled_transformer_vaswani_wmt_en_de_big"
)
def distilled_transformer_vaswani_wmt_en_de_big(args):
    _distilled_defaults(args)
    transformer_vaswani_wmt_en_de_big(args)


@register_model_architecture("distilled_transformer", "distilled_transformer_wmt_en_de_big")
def distilled_transformer_wmt_en_de_big(args):
    _distilled_defaults(args)
    transformer_wmt_en_de_big(args)
