from fairseq_distilled_emb.tasks import reconstruction_init  # noqa: F401
