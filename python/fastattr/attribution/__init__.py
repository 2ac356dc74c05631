"""Attribution methods: ``fn(model, inputs, target=None, *, ...)`` returning a tensor like ``inputs``."""
from .aggregate import AGG_OBJECTIVES, Aggregation, aggregate
from .cam import grad_cam, grad_cam_plus_plus, guided_backprop, guided_grad_cam
from .deeplift import DEEPLIFT_RULES, deeplift
from .iba import IBAStatistics, iba, iba_statistics, multi_layer_iba
from .input_iba import input_iba
from .layer import (PATHWAY_METHODS, layer_integrated_gradients, neuron_integrated_gradients, neuron_mct,
                    pathway_gradient, select_pathway)
from .sea_nn import DeepSubmodular, sea_nn, sea_nn_inputs
from .perturbation import feature_ablation, occlusion, rise, rise_masks
from .surrogate import SURROGATES, kernel_shap, lime
from .gradient import (QUADRATURE, expected_gradients, gradient_shap, input_x_gradient, integrated_gradients,
                       noise_tunnel, quadrature, saliency, smoothgrad, smoothgrad_variants)
from .shared import METHODS, explain_all

# Methods that explain through a conv layer; the report picks the model's last Conv2d.
LAYER_METHODS = {"grad_cam": grad_cam, "grad_cam_plus_plus": grad_cam_plus_plus, "guided_grad_cam": guided_grad_cam}

__all__ = ["LAYER_METHODS", "METHODS", "PATHWAY_METHODS", "QUADRATURE", "SURROGATES", "expected_gradients",
           "feature_ablation", "grad_cam", "grad_cam_plus_plus", "guided_backprop", "guided_grad_cam",
           "kernel_shap", "layer_integrated_gradients", "lime", "neuron_integrated_gradients", "neuron_mct",
           "occlusion", "pathway_gradient", "select_pathway", "gradient_shap", "input_x_gradient",
           "integrated_gradients", "noise_tunnel", "quadrature", "rise", "rise_masks", "saliency", "smoothgrad",
           "smoothgrad_variants", "explain_all",
           "AGG_OBJECTIVES", "Aggregation", "DEEPLIFT_RULES", "aggregate", "deeplift", "IBAStatistics", "iba",
           "iba_statistics", "input_iba", "multi_layer_iba",
           "DeepSubmodular", "sea_nn", "sea_nn_inputs"]
