from fairseq_distilled_emb.tasks import reconstruction_init  # noqa: F401
from fairseq_distilled_emb.tasks import language_modeling_reconstruction_init  # noqa: F401
