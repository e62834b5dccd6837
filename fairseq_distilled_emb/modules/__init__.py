from fairseq_distilled_emb.modules.factorized_embedding import (  # noqa: F401
    FactorizedEmbedding,
    FactorizedOutputProjection,
)
from fairseq_distilled_emb.modules.tensor_train_embedding import (  # noqa: F401
    TensorTrainEmbedding,
)

#: every embedding module that stores a V×d matrix compressed (and owns the tied output path)
COMPRESSED_EMBEDDINGS = (FactorizedEmbedding, TensorTrainEmbedding)
