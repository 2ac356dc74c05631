"""Self-explaining models: :class:`SumOfParts` (SOP, You et al., "Sum-of-Parts Models: Faithful
Attributions for Groups of Features"; SPEC §6) wraps any backbone so that its prediction is a weighted
sum of predictions on groups of features, and :func:`train_sop` trains it; :func:`first_equal_group` finds
the groups of an input that hold the same features."""
from .sop import SOPExplanation, SumOfParts, first_equal_group, train_sop

__all__ = ["SOPExplanation", "SumOfParts", "first_equal_group", "train_sop"]
