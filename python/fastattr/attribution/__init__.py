"""Attribution methods: ``fn(model, inputs, target=None, *, ...)`` returning a tensor like ``inputs``."""
from .gradient import (QUADRATURE, expected_gradients, gradient_shap, input_x_gradient, integrated_gradients,
                       noise_tunnel, quadrature, saliency, smoothgrad)

METHODS = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
}

__all__ = ["METHODS", "QUADRATURE", "expected_gradients", "gradient_shap", "input_x_gradient", "integrated_gradients",
           "noise_tunnel", "quadrature", "saliency", "smoothgrad"]
