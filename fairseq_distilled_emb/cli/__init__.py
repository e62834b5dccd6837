"""``fairseq-distilled-emb`` console script: export, stats and rank subcommands."""
