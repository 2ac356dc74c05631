"""Faithfulness, localisation, robustness, randomisation and complexity metrics:
``fn(model, inputs, attributions, target=None, *, ...)`` →
per-example values (``curves=True`` adds the curves where one exists); :func:`evaluate` runs many
methods × metrics with shared model passes. :data:`METRICS` holds those that need nothing beyond
``(model, inputs, attributions, target)``; the grouped metrics need ``groups=`` and the localisation
metrics ``boxes=`` or ``masks=``; the robustness metrics, :func:`relative_stability` and
:func:`random_logit` / :func:`model_randomisation` take an ``explain`` function in place of the
attributions (the last three also a dict of them, sharing their perturbations, draws or randomised
layers across methods). :func:`sparseness` and :func:`complexity` read the map only; :func:`road`
removes features by noisy linear imputation. :func:`evaluate`
runs :data:`FAITHFULNESS_METRICS` by default and any of :data:`EVALUATE_METRICS` on request."""
from .complexity import complexity, sparseness
from .evaluate import (BETTER, EVALUATE_METRICS, EXPLAIN_METRICS, FAITHFULNESS_METRICS, RANKED_METRICS, Evaluation,
                       evaluate)
from .dataset import DatasetEvaluation, evaluate_dataset, read_rows
from .faithfulness import aupc, deletion, insertion, lerf, mdrs, morf
from .grouped import grouped_deletion, grouped_insertion
from .localisation import ehr, iou, pointing_game
from .randomisation import model_randomisation, random_logit
from .road import ROAD_PERCENTAGES, road
from ..core import Blur, Uniform
from .robustness import avg_sensitivity, max_sensitivity
from .stability import relative_stability
from .sop import deletion_error, grouped_deletion_error, grouped_insertion_error, insertion_error
from .subsets import faithfulness_correlation, infidelity, sensitivity_n, subset_deltas
from .theory import min_total_error

METRICS = {"deletion": deletion, "insertion": insertion, "mdrs": mdrs, "aupc": aupc, "morf": morf,
           "lerf": lerf, "deletion_error": deletion_error, "insertion_error": insertion_error,
           "faithfulness_correlation": faithfulness_correlation, "sensitivity_n": sensitivity_n,
           "infidelity": infidelity, "sparseness": sparseness, "complexity": complexity, "road": road}

__all__ = ["BETTER", "Blur", "DatasetEvaluation", "EVALUATE_METRICS", "EXPLAIN_METRICS", "Evaluation",
           "FAITHFULNESS_METRICS", "METRICS", "RANKED_METRICS", "ROAD_PERCENTAGES", "Uniform", "aupc",
           "avg_sensitivity", "complexity", "deletion", "deletion_error", "ehr", "evaluate",
           "evaluate_dataset", "faithfulness_correlation", "grouped_deletion", "grouped_deletion_error",
           "grouped_insertion", "grouped_insertion_error", "infidelity", "insertion", "insertion_error",
           "iou", "lerf", "max_sensitivity", "mdrs", "min_total_error", "model_randomisation", "morf",
           "pointing_game", "random_logit", "read_rows", "relative_stability", "road", "sensitivity_n",
           "sparseness", "subset_deltas"]
