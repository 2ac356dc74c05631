"""Faithfulness metrics: ``fn(model, inputs, attributions, target=None, *, ...)`` → per-example values."""
from .faithfulness import deletion, insertion

METRICS = {"deletion": deletion, "insertion": insertion}

__all__ = ["METRICS", "deletion", "insertion"]
