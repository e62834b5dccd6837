"""Compressed embeddings: the interface and registry (compressed_embedding.py), and one module per
kind, each registered under its --embedding-factorization name when imported here."""

from fairseq_distilled_emb.modules.compressed_embedding import (  # noqa: F401
    COMPRESSED_EMBEDDING_REGISTRY,
    CompressedEmbedding,
    TeacherInit,
    build_compressed_embedding,
    compressed_keys,
    outermost_compressed_embeddings,
    register_compressed_embedding,
    saved_compressed_embeddings,
)
from fairseq_distilled_emb.modules.factorized_embedding import (  # noqa: F401
    FactorizedEmbedding,
    FactorizedOutputProjection,
)
from fairseq_distilled_emb.modules.dense_head_embedding import (  # noqa: F401
    DenseHeadEmbedding,
)
from fairseq_distilled_emb.modules.tensor_train_embedding import (  # noqa: F401
    TensorTrainEmbedding,
)
from fairseq_distilled_emb.modules.quantized_embedding import (  # noqa: F401
    QuantizedEmbedding,
)
from fairseq_distilled_emb.modules.quantized_dense_head_embedding import (  # noqa: F401
    QuantizedDenseHeadEmbedding,
)
