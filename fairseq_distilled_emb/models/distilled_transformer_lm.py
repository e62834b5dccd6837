"""``distilled_transformer_lm``: fairseq's Transformer language model with a factorized embedding.

The language-model counterpart of :mod:`fairseq_distilled_emb.models.distilled_transformer`: the
token embedding is a :class:`FactorizedEmbedding` ``E ≈ f(U)·W`` and, with
``--share-decoder-input-output-embed``, the output logits go through the same factors
(``(h·Wᵀ)·f(U)ᵀ``, never a V×d matrix). In a language model the embedding is most of the parameters,
which is where the method pays most. Every named architecture calls fairseq's dense LM
architecture for its defaults, so a recipe swaps only ``--arch transformer_lm*`` for
``distilled_transformer_lm*`` and adds ``--embedding-compression X``.

Adaptive input / adaptive softmax (fairseq's other way of shrinking an LM's embedding) and character
embeddings replace the very matrix this model factorizes: they are rejected with a clear error. The
``distilled_transformer_lm_wiki103`` architecture therefore keeps fairseq's WikiText-103 shape
(16 layers, d=1024, dropout 0.3, ...) but uses one tied factorized embedding instead of the adaptive
input/softmax pair.
"""

import logging
from dataclasses import dataclass

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer_lm import (
    DEFAULT_MAX_TARGET_POSITIONS,
    TransformerLanguageModel,
    TransformerLanguageModelConfig,
    transformer_lm_baevski_wiki103,
    transformer_lm_gpt,
    transformer_lm_gpt2_tiny,
)
from fairseq.utils import safe_getattr

from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.models.compressed_embedding_config import CompressedEmbeddingConfig
from fairseq_distilled_emb.models.distilled_transformer import (
    DistilledTransformerDecoder,
    _distilled_defaults,
    log_parameter_summary,
)
from fairseq_distilled_emb.modules import FactorizedOutputProjection, build_compressed_embedding
from fairseq_distilled_emb.modules.int8_linear import use_int8_linears

logger = logging.getLogger(__name__)


@dataclass
class DistilledTransformerLanguageModelConfig(TransformerLanguageModelConfig,
                                              CompressedEmbeddingConfig):
    """fairseq's ``transformer_lm`` configuration plus the plugin's compressed-embedding flags."""


# (config field, flag) of the embedding variants a factorized LM cannot be combined with
_INCOMPATIBLE_EMBEDDINGS = (
    ("adaptive_input", "--adaptive-input"),
    ("adaptive_softmax_cutoff", "--adaptive-softmax-cutoff"),
    ("tie_adaptive_weights", "--tie-adaptive-weights"),
    ("character_embeddings", "--character-embeddings"),
)


def _reject_incompatible_options(args):
    for name, flag in _INCOMPATIBLE_EMBEDDINGS:
        if safe_getattr(args, name, None):
            raise DistilledEmbeddingError(
                f"{flag} cannot be used with a distilled_transformer_lm* --arch: adaptive input/"
                "softmax and character embeddings replace the token embedding this model "
                "factorizes; drop the flag (distilled_transformer_lm_wiki103 is the WikiText-103 "
                "shape with one tied factorized embedding instead)"
            )
    if safe_getattr(args, "base_layers", 0):
        raise DistilledEmbeddingError(
            "--base-layers is not supported by distilled_transformer_lm*: the factorized output "
            "projection is built instead of fairseq's default one, which also inserts BASE layers"
        )
    if safe_getattr(args, "share_decoder_input_output_embed", False) and (
        args.decoder_input_dim != args.decoder_output_dim
    ):
        raise DistilledEmbeddingError(
            f"--share-decoder-input-output-embed needs --decoder-input-dim "
            f"({args.decoder_input_dim}) == --decoder-output-dim ({args.decoder_output_dim}): the "
            "tied output projection multiplies the decoder output by the embedding's factors"
        )


class DistilledLanguageModelDecoder(DistilledTransformerDecoder):
    """An LM decoder whose tied factorized output layer runs inside ``get_normalized_probs``.

    With a tied compressed embedding, ``forward`` returns the decoder's hidden states (B×T×d) and
    ``get_normalized_probs`` computes the V-way logits from them: fairseq's own convention for
    adaptive softmax. Why: ``fairseq-eval-lm --softmax-batch N`` then computes logits and
    log-softmax N positions at a time, in cache, instead of materializing a T×V logits tensor and a
    second one for its log-softmax. At r=31 the logits cost r·(V+d) multiply-adds a token, so
    writing and re-reading those tensors, not arithmetic, was most of the student's scoring time.
    Everything that scores through ``get_normalized_probs`` (criteria, ``fairseq-eval-lm``,
    sampling) is unchanged; the projection is linear and bias-free, so the sequence generator's
    temperature (which divides ``net_output[0]``) still divides the logits. ``net_output[0]`` is
    logits only for an untied (dense) output layer.
    """

    @property
    def defers_output_projection(self) -> bool:
        return isinstance(self.output_projection, FactorizedOutputProjection)

    def output_layer(self, features):
        if self.defers_output_projection:
            return features
        return super().output_layer(features)

    def output_logits(self, net_output):
        """The V-way logits of ``net_output`` (what ``forward`` returns)."""
        if self.defers_output_projection:
            return self.output_projection(net_output[0])
        return net_output[0]

    def get_normalized_probs_scriptable(self, net_output, log_probs, sample=None):
        logits = (self.output_logits(net_output),) + tuple(net_output[1:])
        return super().get_normalized_probs_scriptable(logits, log_probs, sample)


@register_model("distilled_transformer_lm", dataclass=DistilledTransformerLanguageModelConfig)
class DistilledTransformerLanguageModel(TransformerLanguageModel):
    """Transformer LM whose token embedding is factorized as E ≈ f(U)·W (Distilled Embedding).

    With ``--share-decoder-input-output-embed`` (the method's setting, and what
    ``--task language_modeling_reconstruction_init`` expects of the teacher) the decoder's input
    embedding and output projection share ONE factorization; without it only the input is factorized
    and the output projection stays a dense V×d matrix (a warning says so).
    """

    @classmethod
    def build_model(cls, args, task):
        """fairseq's ``TransformerLanguageModel.build_model`` for the plain-embedding case, with the
        decoder class whose tied output projection goes through the factors."""
        _reject_incompatible_options(args)
        if args.decoder_layers_to_keep:
            args.decoder_layers = len(args.decoder_layers_to_keep.split(","))
        if safe_getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = safe_getattr(
                args, "tokens_per_sample", DEFAULT_MAX_TARGET_POSITIONS
            )
        if not safe_getattr(args, "share_decoder_input_output_embed", False):
            logger.warning(
                "distilled_transformer_lm without --share-decoder-input-output-embed: only the "
                "input embedding is factorized, the output projection stays a dense V×d matrix"
            )
        embed_tokens = cls.build_embedding(args, task.source_dictionary, args.decoder_input_dim)
        decoder = DistilledLanguageModelDecoder(
            args, task.target_dictionary, embed_tokens, no_encoder_attn=True
        )
        model = cls(decoder)
        if safe_getattr(args, "int8_body", False):
            use_int8_linears(model)
        log_parameter_summary(model)
        return model

    @classmethod
    def build_embedding(cls, args, dictionary, embed_dim, path=None):
        return build_compressed_embedding(args, dictionary, embed_dim)


# ``--arch distilled_transformer_lm`` needs no function: fairseq registers an architecture of the
# model's own name for dataclass models, whose defaults are the dataclass's (fairseq's ``--arch
# transformer_lm`` works the same way: its dataclass defaults, not base_lm_architecture), so the
# student has exactly the shape of a stock ``--arch transformer_lm`` teacher given the same flags.


@register_model_architecture("distilled_transformer_lm", "distilled_transformer_lm_tiny")
def distilled_transformer_lm_tiny(args):
    """fairseq's ``transformer_lm_gpt2_tiny`` shape (d=64, FFN 64, 2 layers, 1 head, gelu,
    pre-norm), for CPU tests: a stock ``--arch transformer_lm_gpt2_tiny`` teacher matches it."""
    _distilled_defaults(args)
    transformer_lm_gpt2_tiny(args)


@register_model_architecture("distilled_transformer_lm", "distilled_transformer_lm_gpt")
def distilled_transformer_lm_gpt(args):
    _distilled_defaults(args)
    transformer_lm_gpt(args)


@register_model_architecture("distilled_transformer_lm", "distilled_transformer_lm_wiki103")
def distilled_transformer_lm_wiki103(args):
    """fairseq's ``transformer_lm_wiki103`` (Baevski & Auli) shape without adaptive input/softmax:
    one tied factorized embedding instead (``--share-decoder-input-output-embed`` is implied).

    fairseq's function fills adaptive defaults wherever a value is unset (None), so the values the
    user gave (normally none, which the model then accepts) are restored after it: an explicit
    ``--adaptive-input``/``--adaptive-softmax-cutoff`` still reaches the model and is rejected
    there.
    """
    _distilled_defaults(args)
    explicit = {
        name: safe_getattr(args, name, None)
        for name in ("adaptive_input", "adaptive_input_cutoff", "adaptive_softmax_cutoff",
                     "tie_adaptive_weights", "tie_adaptive_proj")
    }
    args.share_decoder_input_output_embed = True
    transformer_lm_baevski_wiki103(args)
    args.adaptive_input = bool(explicit["adaptive_input"])
    args.adaptive_input_cutoff = explicit["adaptive_input_cutoff"]
    args.adaptive_softmax_cutoff = explicit["adaptive_softmax_cutoff"]
    args.tie_adaptive_weights = bool(explicit["tie_adaptive_weights"])
    args.tie_adaptive_proj = bool(explicit["tie_adaptive_proj"])
