"""fastattr: fast feature attribution and faithfulness evaluation for PyTorch.

Fused kernels for the hot paths, each checked against a pure-torch reference, behind a thin,
Captum-like API and drop-in adapters (``fastattr.integrations``).
"""
from . import attribution, cd, metrics, models
from ._backend import available_backends, get_backend, use_backend
from .attribution import (DeepSubmodular, aggregate, deeplift, expected_gradients, feature_ablation, grad_cam,
                          gradient_shap, guided_backprop, iba, iba_statistics, input_iba, input_x_gradient,
                          integrated_gradients, kernel_shap, layer_integrated_gradients, lime, multi_layer_iba,
                          noise_tunnel, occlusion, rise, rise_masks, saliency, sea_nn, smoothgrad)
from .cd import agglomerate_1d, agglomerate_2d, cdep_penalty, contextual_decomposition, trim
from .core import get_model_mode, torch_convolution, torch_pooling, use_model_mode
from .metrics import evaluate, evaluate_dataset
from .models import SumOfParts, train_sop
from .ops import sparsemax

__version__ = "0.1.0"

__all__ = [
    "aggregate", "agglomerate_1d", "agglomerate_2d", "attribution", "available_backends", "cd", "cdep_penalty",
    "contextual_decomposition", "deeplift", "evaluate", "expected_gradients", "feature_ablation", "get_backend",
    "get_model_mode", "grad_cam", "iba", "iba_statistics", "input_iba", "multi_layer_iba", "gradient_shap",
    "guided_backprop", "input_x_gradient", "integrated_gradients",
    "kernel_shap", "layer_integrated_gradients", "lime", "metrics", "noise_tunnel", "occlusion", "rise",
    "rise_masks", "saliency", "smoothgrad", "sparsemax", "torch_convolution", "torch_pooling", "trim", "use_backend", "use_model_mode", "__version__",
    "models", "SumOfParts", "train_sop",
    "DeepSubmodular", "sea_nn", "evaluate_dataset",
]
