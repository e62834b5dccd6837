from fairseq_distilled_emb.models import distilled_transformer  # noqa: F401
from fairseq_distilled_emb.models import distilled_transformer_lm  # noqa: F401
from fairseq_distilled_emb.models import transformer_lm_int_codes  # noqa: F401
