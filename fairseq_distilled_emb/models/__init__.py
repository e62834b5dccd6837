from fairseq_distilled_emb.models import distilled_transformer  # noqa: F401
