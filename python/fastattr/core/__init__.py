"""What every family shares, below ``attribution/``, ``models/``, ``cd/`` and ``metrics/``:

- :mod:`~fastattr.core.contract` — the model contract and argument checks, the seed, and guards
  that leave the model as it was found;
- :mod:`~fastattr.core.targets` — targets and score readers;
- :mod:`~fastattr.core.baselines` — baselines (``Blur``, ``Uniform``, :func:`make_baseline`, ...);
- :mod:`~fastattr.core.chunks` — chunk sizing from the memory budget, forward counting, the chunk
  runner and the one chunk iterator (:class:`ChunkGrid`);
- :mod:`~fastattr.core.features` and :mod:`~fastattr.core.subsets` — features, segments, groups,
  ranking schedules and random / exhaustive subsets (the mask sources);
- :mod:`~fastattr.core.engine` — the one perturbed-forward engine (:func:`perturbed_scores`);
- :mod:`~fastattr.core.layer_kernels` — max pooling and few-channel convolutions through fastattr's faster CPU
  kernels during its calls;
- :mod:`~fastattr.core.layers` — layers named by the caller (a module, a dotted name, a list, or every
  hidden layer).

Imports go down only: ``core`` uses ``ops`` and nothing above it.
"""
from .baselines import Baseline, Blur, Uniform, integer_baseline, make_baseline, path_baselines, reference_inputs
from .chunks import (ChunkGrid, ChunkRunner, CountingModel, chunk_size, forward_chunks, free_memory, gradient_chunk,
                     measured_input_factor, saved_activation_bytes)
from .contract import (ModelCallError, Target, batch_coupled, broadcasts_to, check_count, check_flag, check_inputs,
                       check_model, check_number, check_output, eval_modes, example_draws, frozen_parameters, get_model_mode,
                       is_integer, make_generator, model_entry, model_errors, model_guard, restore_rng, rng_kept,
                       rng_state, run_model, use_model_mode)
from .layers import Layer, hidden_layers, resolve_layers
from .layer_kernels import fast_conv_here, fast_layers, fast_pool_here, torch_convolution, torch_pooling
from .engine import GaussianNoise, MaskBuilder, MaskSet, RankSchedule, Source, perturbed_scores
from .features import (Features, check_attributions, feature_layout, feature_space, fraction_count, group_masks,
                       group_scores, group_unit_rank, map_shapes, patch_segments, rank_features, step_counts, unit_map)
from .subsets import all_subsets, random_subsets
from .targets import READERS, check_scalar_reader, read_scores, resolve_clean, resolve_target, select

__all__ = ["Baseline", "Blur", "ChunkGrid", "ChunkRunner", "CountingModel", "Features", "GaussianNoise", "MaskBuilder",
           "Layer", "MaskSet", "ModelCallError", "READERS", "RankSchedule", "Source", "Target", "Uniform", "all_subsets",
           "batch_coupled", "broadcasts_to", "check_attributions", "check_count", "check_flag", "check_inputs",
           "check_model",
           "check_number", "check_output", "check_scalar_reader", "chunk_size", "eval_modes", "example_draws",
           "fast_conv_here", "fast_layers", "fast_pool_here", "feature_layout",
           "feature_space", "forward_chunks", "fraction_count", "free_memory", "frozen_parameters", "get_model_mode",
           "gradient_chunk", "group_masks", "hidden_layers", "group_scores", "group_unit_rank", "integer_baseline", "is_integer",
           "make_baseline", "make_generator", "map_shapes", "model_entry", "model_errors", "model_guard",
           "measured_input_factor", "patch_segments", "path_baselines", "perturbed_scores", "random_subsets",
           "rank_features", "read_scores", "reference_inputs", "resolve_clean", "resolve_layers", "resolve_target", "restore_rng",
           "rng_kept", "rng_state", "run_model", "saved_activation_bytes", "select", "step_counts", "torch_convolution", "torch_pooling", "unit_map", "use_model_mode"]
