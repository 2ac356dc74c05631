"""Self-explaining models: :class:`SumOfParts` (SOP, You et al., "Sum-of-Parts Models: Faithful
Attributions for Groups of Features"; SPEC §6) wraps any backbone so that its prediction is a weighted
sum of predictions on groups of features, and :func:`train_sop` trains it."""
from .sop import SOPExplanation, SumOfParts, train_sop

__all__ = ["SOPExplanation", "SumOfParts", "train_sop"]
