"""Multi30k De→En recipe: ``run.py`` (profiles, rows, the pipeline) over ``stages.py``."""
