"""Deprecated: the perturbation engine moved to :mod:`fastattr.core` (issue 14). This module keeps
the public names it had, so ``from fastattr.metrics.perturb import make_baseline`` keeps working;
new code imports them from :mod:`fastattr.core`. ``ranked_curve`` and ``masked_scores`` are the
engine (:func:`fastattr.core.perturbed_scores`) with a :class:`~fastattr.core.RankSchedule` or a
:class:`~fastattr.core.MaskSet` source."""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Union

import torch

from ..core import (READERS, Baseline, Blur, ChunkRunner, CountingModel, Features, MaskSet, RankSchedule, Uniform,
                    all_subsets, check_scalar_reader, feature_layout, feature_space, fraction_count, group_masks,
                    group_scores, group_unit_rank, make_baseline, map_shapes, patch_segments, perturbed_scores,
                    random_subsets, rank_features, read_scores, resolve_clean, resolve_target, select, step_counts,
                    unit_map)
from ..core.chunks import forward_chunks
from ..core.features import GRANULARITIES, SEGMENT_SCORES, check_attributions, map_unit, unit_shape
from ..ops.perturb_by_rank import perturb_by_rank

warnings.warn("fastattr.metrics.perturb is deprecated: import from fastattr.core", DeprecationWarning, stacklevel=2)


def ranked_curve(model: Callable, inputs: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor,
                 counts: torch.Tensor, target: torch.Tensor, *, keep_top: bool, reader: str,
                 chunk: int, compile: Union[bool, dict] = False) -> torch.Tensor:
    """Scores ``[B, K]`` on the ranked copies: :func:`fastattr.core.perturbed_scores` with a
    :class:`~fastattr.core.RankSchedule`."""
    return perturbed_scores(model, inputs, baseline, RankSchedule(rank, counts, keep_top), target, reader=reader,
                            chunk=chunk, compile=compile)


def masked_scores(model: Callable, inputs: torch.Tensor, baseline: torch.Tensor, masks: torch.Tensor,
                  target: torch.Tensor, *, reader: str, chunk: int, features: Optional[Features] = None,
                  compile: Union[bool, dict] = False, precise: bool = False,
                  fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scores ``[B, K]`` on explicit masks: :func:`fastattr.core.perturbed_scores` with a
    :class:`~fastattr.core.MaskSet`."""
    return perturbed_scores(model, inputs, baseline, MaskSet(inputs, masks, features, fill), target, reader=reader,
                            chunk=chunk, compile=compile, precise=precise)


__all__ = ["Baseline", "Blur", "ChunkRunner", "CountingModel", "Features", "GRANULARITIES", "READERS",
           "SEGMENT_SCORES", "Uniform", "all_subsets", "check_attributions", "check_scalar_reader",
           "feature_layout", "feature_space", "forward_chunks", "fraction_count", "group_masks", "group_scores",
           "group_unit_rank", "make_baseline", "map_shapes", "map_unit", "masked_scores", "patch_segments",
           "perturb_by_rank", "random_subsets", "rank_features", "ranked_curve", "read_scores", "resolve_clean",
           "resolve_target", "select", "step_counts", "unit_map", "unit_shape"]
