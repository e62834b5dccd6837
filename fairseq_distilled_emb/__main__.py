"""``python -m fairseq_distilled_emb`` runs the ``fairseq-distilled-emb`` console script."""

import sys

from fairseq_distilled_emb.cli.__main__ import main

sys.exit(main())
