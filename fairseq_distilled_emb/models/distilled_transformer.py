"""``distilled_transformer``: fairseq's Transformer with a factorized (Distilled Embedding) embedding.

Only the builders change (as in fairseq's pointer_generator and linformer plugins): the embedding is a
:class:`FactorizedEmbedding` and the decoder's tied output projection goes through its factors. Every
named architecture calls the matching dense fairseq architecture, so a recipe swaps only ``--arch``.
"""

import argparse
import logging
from dataclasses import fields

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

from fairseq.dataclass.utils import gen_parser_from_dataclass

from fairseq_distilled_emb import factorization
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.models.compressed_embedding_config import CompressedEmbeddingConfig
from fairseq_distilled_emb.modules.int8_linear import use_int8_linears
from fairseq_distilled_emb.modules import (
    CompressedEmbedding,
    FactorizedOutputProjection,
    build_compressed_embedding,
    outermost_compressed_embeddings,
)

logger = logging.getLogger(__name__)

def as_namespace(args):
    """A legacy model's config as an argparse Namespace.

    A checkpoint whose model config was saved as a plain dict comes back as a DictConfig, and
    ``TransformerConfig.from_namespace`` silently drops a DictConfig's keys it does not declare —
    ours (the rank flags) included. A Namespace keeps them.
    """
    if isinstance(args, DictConfig):
        return argparse.Namespace(**OmegaConf.to_container(args, resolve=True))
    return args


def compressed_embeddings(model):
    """The distinct compressed embedding modules of ``model`` (shared ones counted once)."""
    return list(outermost_compressed_embeddings(model).values())


def log_parameter_summary(model):
    """One line per distinct embedding: dense vs. factorized parameters, ratio, model total."""
    total = sum(p.numel() for p in model.parameters())
    for embedding in compressed_embeddings(model):
        dense = factorization.dense_embedding_params(
            embedding.num_embeddings, embedding.embedding_dim
        )
        factorized = embedding.num_compressed_params()
        logger.info(
            f"factorized embedding: V={embedding.num_embeddings} d={embedding.embedding_dim} "
            f"{embedding.size_description()} | dense embedding params {dense:,} | factorized params "
            f"{factorized:,} | ratio {dense / factorized:.2f}x | total model params {total:,}"
        )


class DistilledTransformerDecoder(TransformerDecoder):
    """A Transformer decoder whose tied output projection computes logits through the factors."""

    def build_output_projection(self, args, dictionary, embed_tokens):
        if self.share_input_output_embed and isinstance(embed_tokens, CompressedEmbedding):
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
        gen_parser_from_dataclass(parser, CompressedEmbeddingConfig())

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(as_namespace(args), task)
        if getattr(args, "int8_body", False):
            use_int8_linears(model)
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
        return build_compressed_embedding(args, dictionary, embed_dim)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return DistilledTransformerDecoder(
            args, tgt_dict, embed_tokens, no_encoder_attn=getattr(args, "no_cross_attention", False)
        )


def _distilled_defaults(args):
    """The compressed-embedding flags' dataclass defaults, where the args lack them."""
    for item in fields(CompressedEmbeddingConfig):
        if not item.name.startswith("_") and not hasattr(args, item.name):
            setattr(args, item.name, item.default)


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
