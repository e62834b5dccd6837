from fairseq_distilled_emb.modules.factorized_embedding import (  # noqa: F401
    FactorizedEmbedding,
    FactorizedOutputProjection,
)
