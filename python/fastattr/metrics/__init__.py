"""Faithfulness metrics: ``fn(model, inputs, attributions, target=None, *, ...)`` → per-example values;
:func:`evaluate` runs many methods × metrics with shared model passes."""
from .evaluate import EVALUATE_METRICS, Evaluation, evaluate
from .faithfulness import deletion, insertion
from .subsets import faithfulness_correlation, infidelity, sensitivity_n, subset_deltas

METRICS = {"deletion": deletion, "insertion": insertion}

__all__ = ["EVALUATE_METRICS", "METRICS", "Evaluation", "deletion", "evaluate", "faithfulness_correlation",
           "infidelity", "insertion", "sensitivity_n", "subset_deltas"]
