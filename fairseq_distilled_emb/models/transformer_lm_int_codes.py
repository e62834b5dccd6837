"""``transformer_lm_int_codes``: a stock fairseq language model whose embedding tables are stored
as per-row integer codes (``fairseq-distilled-emb export --embedding-bits B`` of an adaptive-input
LM).

fairseq's adaptive input (Baevski & Auli 2019, ``--adaptive-input`` with a tied
``--adaptive-softmax``) is a language-model user's own way to a small embedding; the plugin's
export stores each band's table as B-bit codes (:class:`QuantizedEmbedding`), as it does a dense E.
The adaptive softmax multiplies every band's whole table (its head by band 0's, each tail cluster by
its band's), so the tables are dequantized once on load and kept in float, as the plugin's
quantized dense LM keeps its table: the codes are what is stored and shipped. Everything else is
fairseq's ``TransformerLanguageModel`` with its saved configuration, so ``fairseq-eval-lm
--user-dir`` scores the file exactly as the stock model holding the dequantized tables.
"""

from dataclasses import dataclass
from typing import Dict

import torch
from fairseq.models import register_model
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

from fairseq_distilled_emb.checkpoints import tensor_identity
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import QuantizedEmbedding, saved_compressed_embeddings

ARCH = "transformer_lm_int_codes"


@dataclass
class TransformerLanguageModelIntCodesConfig(TransformerLanguageModelConfig):
    """fairseq's ``transformer_lm`` configuration, unchanged: the codes carry their own shapes."""


def dequantized_state(module: torch.nn.Module, model: Dict[str, torch.Tensor]) -> Dict:
    """``model`` with each coded table as the float ``<prefix>.weight`` it stands for, also under
    every other name ``module`` ties to that parameter (the adaptive softmax's head and tails)."""
    _, groups = saved_compressed_embeddings(model, {"embedding_factorization": "quantized"})
    state = {key: value for key, value in model.items() if not QuantizedEmbedding.owns_key(key)}
    own = module.state_dict(keep_vars=True)
    names_of = {}
    for name, parameter in own.items():
        names_of.setdefault(tensor_identity(parameter), []).append(name)
    for prefix, tensors in groups.items():
        weight = f"{prefix}.weight"
        if weight not in own:
            raise DistilledEmbeddingError(
                f"{prefix}: the checkpoint stores it as integer codes, but its configuration "
                f"builds no {weight}; pass the file fairseq-distilled-emb export wrote, unedited")
        table = QuantizedEmbedding.saved_dense_weight(tensors, None)
        for name in names_of[tensor_identity(own[weight])]:
            state[name] = table
    return state


@register_model(ARCH, dataclass=TransformerLanguageModelIntCodesConfig)
class TransformerLanguageModelIntCodes(TransformerLanguageModel):
    """fairseq's Transformer LM, loaded from a state whose embedding tables are integer codes."""

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        return super().load_state_dict(dequantized_state(self, state_dict), strict=strict,
                                       model_cfg=model_cfg, args=args)
