from fairseq_distilled_emb.criterions import (  # noqa: F401
    label_smoothed_cross_entropy_with_distillation,
)
