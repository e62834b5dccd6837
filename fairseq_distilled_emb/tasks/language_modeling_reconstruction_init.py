"""``language_modeling_reconstruction_init``: fairseq's language modeling task whose factorized
student starts from (and distils from) a trained dense ``transformer_lm*`` teacher.

Everything teacher-related (loading and validation, the reconstruction init of the factors, the
weight copy, the frozen teacher kept on the task and never saved) is the translation task's
:class:`~fairseq_distilled_emb.tasks.reconstruction_init.ReconstructionInitMixin`; this module only
says where a language model's dictionary lives (``dict.txt``). The teacher is a stock dense
``transformer_lm*`` checkpoint trained with ``--share-decoder-input-output-embed`` on data binarized
with the same dictionary (``fairseq-preprocess --only-source --srcdict``)::

    fairseq-train data-bin --user-dir fairseq_distilled_emb \\
        --task language_modeling_reconstruction_init --teacher-path teacher/checkpoint_best.pt \\
        --arch distilled_transformer_lm --share-decoder-input-output-embed \\
        --embedding-compression 8 --criterion label_smoothed_cross_entropy_with_distillation ...

A student checkpoint is evaluated and sampled with the stock ``--task language_modeling``
(``fairseq-eval-lm``, ``fairseq-interactive``/``fairseq-generate``): no teacher file is needed then.
"""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from fairseq_distilled_emb.tasks.reconstruction_init import (
    ARCHITECTURE_FIELDS,
    ReconstructionInitConfig,
    ReconstructionInitMixin,
)

# A language model's shape beyond the translation task's fields (which already cover pre/post-norm,
# the activation and embedding scaling): a teacher and a
# student that differ here would copy weights of the same shapes into a different network (e.g. a
# post-norm ``--arch transformer_lm`` teacher into a pre-norm ``distilled_transformer_lm_gpt``).
LANGUAGE_MODEL_FIELDS = (
    "decoder_input_dim",
    "decoder_output_dim",
    "no_decoder_final_norm",
)


@dataclass
class LanguageModelingReconstructionInitConfig(LanguageModelingConfig, ReconstructionInitConfig):
    pass


@register_task(
    "language_modeling_reconstruction_init", dataclass=LanguageModelingReconstructionInitConfig
)
class LanguageModelingReconstructionInitTask(ReconstructionInitMixin, LanguageModelingTask):
    """Language modeling whose factorized student starts from (and distils from) a teacher."""

    architecture_fields = ARCHITECTURE_FIELDS + LANGUAGE_MODEL_FIELDS

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets=targets)
        # fairseq's LanguageModelingTask is a LegacyFairseqTask: it keeps its configuration as
        # self.args and leaves self.cfg None, while the mixin reads its fields from self.cfg.
        self.cfg = args

    def _dictionaries(self):
        # fairseq-preprocess --only-source writes one dictionary, dict.txt; the teacher's data
        # directory holds the same file, compared symbol by symbol when reachable.
        return [{"lang": None, "file": "dict.txt", "dictionary": self.source_dictionary}]
