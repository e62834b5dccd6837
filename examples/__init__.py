"""The runnable recipes (importable as ``examples.multi30k`` from the repository root)."""
