"""fastattr: fast feature attribution and faithfulness evaluation for PyTorch.

Fused kernels for the hot paths, each checked against a pure-torch reference, behind a thin,
Captum-like API and drop-in adapters (``fastattr.integrations``).
"""
from . import attribution, metrics
from ._backend import available_backends, get_backend, use_backend
from .attribution import (expected_gradients, grad_cam, gradient_shap, guided_backprop, input_x_gradient,
                          integrated_gradients, layer_integrated_gradients, noise_tunnel, saliency, smoothgrad)
from .metrics import evaluate
from .ops import sparsemax

__version__ = "0.1.0"

__all__ = [
    "attribution", "available_backends", "evaluate", "expected_gradients", "get_backend", "grad_cam",
    "gradient_shap", "guided_backprop", "input_x_gradient", "integrated_gradients", "layer_integrated_gradients",
    "metrics", "noise_tunnel", "saliency", "smoothgrad", "sparsemax", "use_backend", "__version__",
]
