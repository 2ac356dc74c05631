"""The model contract swept over every public entry point (issue 15): each is called with bad or
unusual inputs — wrong rank, mismatched batch, out-of-range target, NaN / Inf, an empty batch, the
wrong dtype, non-contiguous and channels-last inputs, a train-mode model with BatchNorm and Dropout
carrying hooks and ``.grad``, a model returning a tuple — and must give a ``ValueError`` /
``TypeError`` naming the argument or the correct result, leaving inputs, parameters, buffers,
flags, hooks and ``.grad`` exactly as they were.

:data:`ENTRY_POINTS` lists every public callable that runs a model, :data:`NO_MODEL` every other
public callable with the reason; a public name in neither fails the test, so a new entry point
cannot be added without being swept."""
import copy
import inspect
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fastattr
import fastattr.attribution as A
import fastattr.cd as C
import fastattr.metrics as M
import fastattr.models as Mo
from fastattr.integrations import acd as facd
from fastattr.integrations import captum as fc
from fastattr.integrations import entmax as fe
from fastattr.integrations import quantus as fq
from tests.models import batchnorm_with_statistics, rand

B, CLASSES = 3, 5
TARGET = torch.tensor([0, 3, 1])


def cnn(dtype=torch.float64, seed: int = 0) -> nn.Module:
    """Conv → BatchNorm (non-trivial statistics) → ReLU → Dropout → pool → Linear, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), batchnorm_with_statistics(6, affine=True), nn.ReLU(),
                         nn.Dropout(0.3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, CLASSES)
                         ).to(dtype).eval()


class Tuple(nn.Module):
    """A model returning ``(logits, extra)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.training = net.training

    def forward(self, x):
        return self.net(x), x.mean()


class SeqFirstLSTM(nn.Module):
    """acd's text model layout (for ``cd_text``): embed → sequence-first LSTM → hidden_to_label."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden_dim = 6
        self.embed = nn.Embedding(20, 5)
        self.lstm = nn.LSTM(5, 6)
        self.hidden_to_label = nn.Linear(6, 3)
        self.double().eval()

    def forward(self, batch):
        _, (h, _) = self.lstm(self.embed(batch.text))
        return self.hidden_to_label(h[-1])


def conv1d(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8, CLASSES)
                         ).to(dtype).eval()


def _attr(x):
    return torch.sin(torch.arange(math.prod(x.shape[1:]), dtype=x.dtype) * 0.7).reshape(x.shape[1:]) * x.abs()


def _groups(x):
    g = torch.zeros(4, *x.shape[-2:], dtype=torch.bool)
    g[0, :4], g[1, 4:], g[2, :, :4], g[3, :, 4:] = True, True, True, True
    return g


def _masks(x):
    m = torch.zeros(2, *x.shape[1:], dtype=x.dtype)
    m[0, :, :4], m[1, :, 4:] = 1, 1
    return m


def _patches(x):
    """Four 4×4 patches shared by every channel."""
    return (torch.arange(8)[:, None] // 4 * 2 + torch.arange(8)[None] // 4).reshape(1, 1, 8, 8)


def _window(x):
    return (x.shape[1],) + (4,) * (x.dim() - 2)


def _layer(m):
    return m.net[0] if isinstance(m, Tuple) else m[0]


def _quantus(cls, explain: bool = False, **kw):
    def call(m, x, t):
        a = _attr(x)[:, :1] if x.dim() == 4 else _attr(x)
        more = {"explain_func": _saliency_np} if explain else {}
        return cls(disable_warnings=True, **kw)(model=m, x_batch=x.numpy(), y_batch=np.asarray(t),
                                                a_batch=a.numpy(), device="cpu", **more)
    return call


def _saliency_np(model, inputs, targets, **kwargs):
    """A Quantus explain_func: saliency summed over the channels, as numpy."""
    x = torch.as_tensor(inputs, dtype=next(model.parameters()).dtype)
    return A.saliency(model, x, torch.as_tensor(targets)).sum(1, keepdim=True).numpy()


def _sop(m):
    """A Sum-of-Parts model around ``m`` (its 5 outputs as the features), seeded."""
    return Mo.SumOfParts(m, CLASSES, input_shape=(3, 8, 8), patch_size=2, n_groups=4, k=0.25, generator=0)


def _iba_stats(m, x):
    """Layer statistics for iba from fixed inputs through an eval-mode copy of the model (not from x,
    whose bad cases iba itself must catch)."""
    copy_ = copy.deepcopy(m).eval()
    dtype = next(copy_.parameters()).dtype
    return A.iba_statistics(copy_, _layer(copy_), rand(4, 3, 8, 8, seed=9).to(dtype))


def _dataset(m, x, t):
    """evaluate_dataset over (x, t) as data (target: the labels), batches of 2: the summary and every row."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        res = M.evaluate_dataset(m, (x, t), {"s": "saliency"}, ["deletion", "infidelity"], out=f"{folder}/r.jsonl",
                                 target="label", batch_size=2, n_subsets=4)
        rows = [[r["values"][k]["s"] for k in ("deletion", "infidelity")] for r in M.read_rows(f"{folder}/r.jsonl")]
    return res.summary, rows


def _sensitivity(fn):
    return lambda m, x, t: fn(m, x, A.saliency, t, n_samples=3)


#: name → (call(model, inputs, target), cases that do not apply to it, with the reason in CASES_NA)
ENTRY_POINTS = {
    "saliency": lambda m, x, t: A.saliency(m, x, t),
    "input_x_gradient": lambda m, x, t: A.input_x_gradient(m, x, t),
    "integrated_gradients": lambda m, x, t: A.integrated_gradients(m, x, t, n_steps=4),
    "smoothgrad": lambda m, x, t: A.smoothgrad(m, x, t, n_samples=2),
    "smoothgrad_variants": lambda m, x, t: A.smoothgrad_variants(m, x, t, n_samples=2)["vargrad"],
    "explain_all": lambda m, x, t: A.explain_all(m, x, t, methods={"s": "saliency", "i": "input_x_gradient"})["i"],
    "gradient_shap": lambda m, x, t: A.gradient_shap(m, x, t, baselines=torch.zeros_like(x[:2]), n_samples=2),
    "expected_gradients": lambda m, x, t: A.expected_gradients(m, x, t, references=rand(2, *x.shape[1:], seed=5).to(
        x.dtype), n_samples=2),
    "noise_tunnel": lambda m, x, t: A.noise_tunnel(A.saliency, m, x, t, n_samples=2),
    "deeplift": lambda m, x, t: A.deeplift(m, x, t, baselines=0.1, return_convergence_delta=True),
    "aggregate": lambda m, x, t: A.aggregate(m, x, t, methods={"s": "saliency", "d": A.deeplift}, n_samples=2),
    "iba_statistics": lambda m, x, t: A.iba_statistics(m, _layer(m), x),
    "iba": lambda m, x, t: A.iba(m, x, t, layer=_layer(m), statistics=_iba_stats(m, x), steps=2, n_noise=2,
                                 generator=0),
    "multi_layer_iba": lambda m, x, t: A.multi_layer_iba(m, x, t, layers=[_layer(m), _layer(m)],
                                                         statistics=[_iba_stats(m, x)] * 2, steps=2, n_noise=2,
                                                         generator=0),
    "input_iba": lambda m, x, t: A.input_iba(m, x, t, layer=_layer(m), statistics=_iba_stats(m, x), feature_steps=2,
                                             gan_steps=2, gan_batch=2, steps=2, n_noise=2, generator=0),
    "sea_nn": lambda m, x, t: A.sea_nn(m, x, t, methods=["saliency", "input_x_gradient"], segments=None, grid=4,
                                       hidden=(4, 2), epochs=1, percentiles=(50,)),
    "guided_backprop": lambda m, x, t: A.guided_backprop(m, x, t),
    "grad_cam": lambda m, x, t: A.grad_cam(m, x, t, layer=_layer(m)),
    "grad_cam_plus_plus": lambda m, x, t: A.grad_cam_plus_plus(m, x, t, layer=_layer(m)),
    "guided_grad_cam": lambda m, x, t: A.guided_grad_cam(m, x, t, layer=_layer(m)),
    "layer_integrated_gradients": lambda m, x, t: A.layer_integrated_gradients(m, x, t, layer=_layer(m),
                                                                               n_steps=4),
    "neuron_mct": lambda m, x, t: A.neuron_mct(m, x, t),
    "neuron_integrated_gradients": lambda m, x, t: A.neuron_integrated_gradients(m, x, t, n_steps=4),
    "pathway_gradient": lambda m, x, t: A.pathway_gradient(m, x, t, keep=0.3),
    "occlusion": lambda m, x, t: A.occlusion(m, x, t, sliding_window_shapes=_window(x)),
    "feature_ablation": lambda m, x, t: A.feature_ablation(m, x, t),
    "rise": lambda m, x, t: A.rise(m, x, t, n_masks=4),
    "kernel_shap": lambda m, x, t: A.kernel_shap(m, x, t, feature_mask=_patches(x)),
    "lime": lambda m, x, t: A.lime(m, x, t, feature_mask=_patches(x), n_samples=16, surrogate="ridge"),
    "deletion": lambda m, x, t: M.deletion(m, x, _attr(x), t),
    "insertion": lambda m, x, t: M.insertion(m, x, _attr(x), t),
    "morf": lambda m, x, t: M.morf(m, x, _attr(x), t),
    "lerf": lambda m, x, t: M.lerf(m, x, _attr(x), t),
    "mdrs": lambda m, x, t: M.mdrs(m, x, _attr(x), t),
    "aupc": lambda m, x, t: M.aupc(m, x, _attr(x), t),
    "grouped_deletion": lambda m, x, t: M.grouped_deletion(m, x, _attr(x), t, groups=_groups(x)),
    "grouped_insertion": lambda m, x, t: M.grouped_insertion(m, x, _attr(x), t, groups=_groups(x)),
    "deletion_error": lambda m, x, t: M.deletion_error(m, x, _attr(x), t, n_subsets=4),
    "insertion_error": lambda m, x, t: M.insertion_error(m, x, _attr(x), t, n_subsets=4),
    "grouped_deletion_error": lambda m, x, t: M.grouped_deletion_error(m, x, _attr(x).flatten(1)[:, :4], t,
                                                                       groups=_groups(x), n_subsets=4),
    "grouped_insertion_error": lambda m, x, t: M.grouped_insertion_error(m, x, _attr(x).flatten(1)[:, :4], t,
                                                                         groups=_groups(x), n_subsets=4),
    "min_total_error": lambda m, x, t: M.min_total_error(m, x, t, segments=_patches(x)[0, 0]),
    "faithfulness_correlation": lambda m, x, t: M.faithfulness_correlation(m, x, _attr(x), t, n_subsets=4),
    "sensitivity_n": lambda m, x, t: M.sensitivity_n(m, x, _attr(x), t, ns=[4], n_subsets=4),
    "infidelity": lambda m, x, t: M.infidelity(m, x, _attr(x), t, n_subsets=4),
    "subset_deltas": lambda m, x, t: M.subset_deltas(m, x, t, math.prod(x.shape[1:]), subset_size=8,
                                                     n_subsets=4).delta,
    "avg_sensitivity": _sensitivity(M.avg_sensitivity),
    "max_sensitivity": _sensitivity(M.max_sensitivity),
    "random_logit": lambda m, x, t: M.random_logit(m, x, A.saliency, t),
    "road": lambda m, x, t: M.road(m, x, _attr(x), t, percentages=[30, 70]),
    "relative_stability": lambda m, x, t: M.relative_stability(m, x, A.saliency, t, n_samples=3),
    "model_randomisation": lambda m, x, t: M.model_randomisation(m, x, A.saliency, t),
    "evaluate_dataset": _dataset,
    "evaluate": lambda m, x, t: fastattr.evaluate(m, x, t, attributions={"a": _attr(x)}, n_subsets=4,
                                                  metrics=["deletion", "infidelity", "deletion_error"]),
    "contextual_decomposition": lambda m, x, t: C.contextual_decomposition(m, x, _masks(x), t),
    "decompose": lambda m, x, t: C.decompose(m, x, _masks(x)[None].repeat((x.shape[0],) + (1,) * x.dim())),
    "cd_blocks": lambda m, x, t: C.cd_blocks(m, x, t, block=4),
    "cdep_penalty": lambda m, x, t: C.cdep_penalty(m, x, _masks(x)),
    "trim": lambda m, x, t: C.trim(m, x, t, n_bands=2),
    "agglomerate_2d": lambda m, x, t: C.agglomerate_2d(m, x[1:2], t[1:2], sweep=4, n_iters=1),
    "agglomerate_1d": lambda m, x, t: C.agglomerate_1d(conv1d(x.dtype), x[:1, :2, 0], 1, n_iters=1),
    "captum.Saliency": lambda m, x, t: fc.Saliency(m).attribute(x, target=t),
    "captum.InputXGradient": lambda m, x, t: fc.InputXGradient(m).attribute(x, target=t),
    "captum.IntegratedGradients": lambda m, x, t: fc.IntegratedGradients(m).attribute(x, target=t, n_steps=4),
    "captum.NoiseTunnel": lambda m, x, t: fc.NoiseTunnel(fc.Saliency(m)).attribute(x, target=t, nt_samples=2),
    "captum.GradientShap": lambda m, x, t: fc.GradientShap(m).attribute(x, torch.zeros_like(x[:2]), target=t,
                                                                        n_samples=2),
    "captum.DeepLift": lambda m, x, t: fc.DeepLift(m).attribute(x, 0.1, target=t),
    "captum.LayerIntegratedGradients": lambda m, x, t: fc.LayerIntegratedGradients(m, _layer(m)).attribute(
        x, target=t, n_steps=4),
    "captum.LayerGradCam": lambda m, x, t: fc.LayerGradCam(m, _layer(m)).attribute(x, target=t),
    "captum.GuidedBackprop": lambda m, x, t: fc.GuidedBackprop(m).attribute(x, target=t),
    "captum.GuidedGradCam": lambda m, x, t: fc.GuidedGradCam(m, _layer(m)).attribute(x, target=t),
    "captum.FeatureAblation": lambda m, x, t: fc.FeatureAblation(m).attribute(x, target=t),
    "captum.Occlusion": lambda m, x, t: fc.Occlusion(m).attribute(x, _window(x), target=t),
    "captum.KernelShap": lambda m, x, t: fc.KernelShap(m).attribute(x, target=t, feature_mask=_patches(x)),
    "captum.Lime": lambda m, x, t: torch.manual_seed(0) and fc.Lime(m).attribute(x, target=t,
                                                                               feature_mask=_patches(x)),
    "quantus.PixelFlipping": _quantus(fq.PixelFlipping, features_in_step=16),
    "quantus.RegionPerturbation": _quantus(fq.RegionPerturbation, patch_size=4, regions_evaluation=2),
    "quantus.FaithfulnessCorrelation": _quantus(fq.FaithfulnessCorrelation, nr_runs=4, subset_size=8),
    "quantus.SensitivityN": _quantus(fq.SensitivityN, features_in_step=16, n_max_percentage=0.5),
    "quantus.Infidelity": _quantus(fq.Infidelity, perturb_patch_sizes=[4], n_perturb_samples=2),
    "quantus.AvgSensitivity": _quantus(fq.AvgSensitivity, explain=True, nr_samples=2),
    "quantus.MaxSensitivity": _quantus(fq.MaxSensitivity, explain=True, nr_samples=2),
    "quantus.RandomLogit": _quantus(fq.RandomLogit, explain=True, num_classes=CLASSES),
    "quantus.MPRT": _quantus(fq.MPRT, explain=True),
    "quantus.ModelParameterRandomisation": _quantus(fq.ModelParameterRandomisation, explain=True),
    "quantus.RelativeInputStability": _quantus(fq.RelativeInputStability, explain=True, nr_samples=2),
    "quantus.RelativeOutputStability": _quantus(fq.RelativeOutputStability, explain=True, nr_samples=2),
    "quantus.RelativeRepresentationStability": _quantus(fq.RelativeRepresentationStability, explain=True,
                                                        nr_samples=2),
    "quantus.ROAD": _quantus(fq.ROAD, percentages=[30, 60]),
    "SumOfParts": lambda m, x, t: _sop(m).explain(x, t),
    "train_sop": lambda m, x, t: Mo.train_sop(_sop(m), (x, t), epochs=1, batch_size=2, generator=0),
    "acd.cd": lambda m, x, t: facd.cd(x, m, _masks(x)[0, 0].bool().float(), device="cpu"),
    "acd.cd_text": lambda m, x, t: facd.cd_text(types.SimpleNamespace(text=torch.arange(7)[:, None] % 20),
                                                SeqFirstLSTM(), 1, 3),
}

#: public callables that run no model, and why
NO_MODEL = {
    "available_backends": "backend query", "get_backend": "backend query", "use_backend": "backend switch",
    "get_model_mode": "mode query", "use_model_mode": "mode switch", "sparsemax": "an op on a tensor",
    "torch_pooling": "a switch: max pooling on torch's kernel",
    "torch_convolution": "a switch: convolution gradients on torch's kernel",
    "rise_masks": "builds masks", "quadrature": "path nodes", "select_pathway": "works on contributions",
    "pointing_game": "localisation: attributions against boxes, no model call",
    "iou": "localisation: attributions against boxes, no model call",
    "ehr": "localisation: attributions against boxes, no model call",
    "Blur": "a baseline", "Uniform": "a baseline", "Evaluation": "a result", "Hierarchy": "a result",
    "block_masks": "builds masks", "frequency_bands": "builds masks", "band_components": "a transform",
    "plot_hierarchy": "plots a result", "register_rule": "CD rule table", "registered_rules": "CD rule table",
    "trace": "traces the graph (fx) in eval mode without running inputs",
    "entmax.sparsemax": "an op on a tensor", "entmax.Sparsemax": "an nn.Module op",
    "sparseness": "complexity: reads the attribution map only, no model call",
    "complexity": "complexity: reads the attribution map only, no model call",
    "quantus.Sparseness": "scores a_batch only; the model only reaches explain_func (Quantus takes None)",
    "quantus.Complexity": "scores a_batch only; the model only reaches explain_func (Quantus takes None)",
    "DeepSubmodular": "an nn.Module of its own: set functions, no user model",
    "sea_nn_inputs": "pre-processes attribution maps, no model call",
    "Aggregation": "a result", "IBAStatistics": "a result", "SOPExplanation": "a result", "quantus.normalise_by_max": "normalises attributions", "quantus.QuantusAssertionError": "an exception",
    "captum.CaptumAssertionError": "an exception", "DatasetEvaluation": "a result",
    "read_rows": "reads a JSON-lines file of evaluate_dataset rows",
    "first_equal_group": "compares group masks, no model call",
}

PUBLIC = [(fastattr, ""), (A, ""), (M, ""), (C, ""), (Mo, ""), (fc, "captum."), (fq, "quantus."), (facd, "acd."),
          (fe, "entmax.")]
#: entry points guarded by their own code, not by ``model_entry``, and why
SELF_GUARDED = {"train_sop": "trains the SOP in place (parameters and BatchNorm statistics change by design); it "
                             "restores every training flag and requires_grad itself and leaves a frozen backbone, "
                             "the data and the global random state as they were"}


def test_every_public_entry_point_is_swept():
    names = set()
    for module, prefix in PUBLIC:
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not inspect.ismodule(obj):
                names.add(prefix + name)
    missing = names - set(ENTRY_POINTS) - set(NO_MODEL)
    assert not missing, f"public callables neither swept nor listed as running no model: {sorted(missing)}"
    assert not (set(ENTRY_POINTS) | set(NO_MODEL)) - names, "listed names that are not public"


@pytest.mark.parametrize("name", sorted(n for n in ENTRY_POINTS if "." not in n and n not in SELF_GUARDED))
def test_every_function_entry_point_is_guarded_by_construction(name):
    entry = getattr(fastattr, name, None) or getattr(A, name, None) or getattr(M, name, None) or getattr(C, name)
    if inspect.isclass(entry):  # a model class: its explain method is the entry point
        entry = entry.explain
    assert hasattr(entry, "model_contract")


def _state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "ids": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "flags": [(m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks))
                  for m in model.modules()],
        "grad": [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
    }


def _same_state(a: dict, b: dict) -> None:
    assert a["ids"] == b["ids"]
    for k in a["tensors"]:
        assert torch.equal(a["tensors"][k], b["tensors"][k]), f"{k} changed"
    assert a["flags"] == b["flags"], "a training flag or a hook changed"
    for (ra, ga), (rb, gb) in zip(a["grad"], b["grad"]):
        assert ra == rb and ((ga is None and gb is None) or torch.equal(ga, gb)), "a parameter's .grad changed"


def _values(out) -> list:
    """The result as a flat list of float64 tensors, for comparisons."""
    if isinstance(out, torch.Tensor):
        return [out.detach().double()]
    if out is None or isinstance(out, str):
        return []
    if isinstance(out, np.ndarray) or isinstance(out, (int, float, np.number)):
        return [torch.as_tensor(np.asarray(out, dtype=np.float64))]
    if isinstance(out, (list, tuple)):
        return [v for o in out for v in _values(o)]
    if isinstance(out, dict):
        return [v for k in sorted(out) for v in _values(out[k])]
    if isinstance(out, M.Evaluation):
        return _values(out.values)
    if isinstance(out, C.Hierarchy):
        return [torch.as_tensor(out.unit_scores, dtype=torch.float64)]
    return _values(vars(out))


def _close(a, b) -> None:
    for u, v in zip(_values(a), _values(b), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-9, equal_nan=True)


def _model_for(name: str, dtype=torch.float64) -> nn.Module:
    return cnn(torch.float32 if name.startswith("quantus.") else dtype)


def _inputs(name: str, dtype=torch.float64) -> torch.Tensor:
    return rand(B, 3, 8, 8, seed=1).to(torch.float32 if name.startswith("quantus.") else dtype)


#: cases that do not apply to an entry point, and why
NOT_APPLICABLE = {
    "agglomerate_1d": {"rank", "batch", "target", "nan", "empty", "dtype", "tuple", "layout"},  # its own model
    "acd.cd_text": {"rank", "batch", "target", "nan", "empty", "dtype", "tuple", "layout"},  # token batch
    "agglomerate_2d": {"batch", "rank"},  # one image, [C, H, W] or [1, C, H, W]
    "decompose": {"batch", "target"},  # no target: β, γ of every output
    "cdep_penalty": {"batch", "target"},  # no target: a penalty over every output
    "acd.cd": {"batch", "target"},  # class-wise scores, no target
    "iba_statistics": {"batch", "target", "tuple"},  # no target; it stops at the layer, never reads the output
    "train_sop": {"batch", "target"},  # labels, not a target: their errors name the labels (tests/models)
}


def _cases(*kinds):
    return [(n, k) for n in sorted(ENTRY_POINTS) for k in kinds if k not in NOT_APPLICABLE.get(n, ())]


#: what an entry point calls the inputs and the target, where not ``inputs`` and ``target``
ARGUMENT_NAMES = {"quantus": {"inputs": "x_batch", "target": "y_batch"}, "acd.cd": {"inputs": "im_torch"},
                  "iba_statistics": {"inputs": "data"}, "evaluate_dataset": {"inputs": "data"}}


def _raises_naming(name: str, exc, word: str, call) -> None:
    word = ARGUMENT_NAMES.get(name.split(".")[0], ARGUMENT_NAMES.get(name, {})).get(word, word)
    with pytest.raises(exc) as info:
        call()
    assert word in str(info.value), f"the error does not name {word!r}: {info.value}"


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_train_mode_model_with_hooks_and_grads_is_left_exactly_as_given(name):
    """A train-mode model with BatchNorm and Dropout, a forward hook, a pre-hook and a ``.grad`` on
    every parameter: after the call, every parameter, buffer, flag, hook and ``.grad`` is as before,
    and the result is the eval-mode result (the Captum drop-ins: Captum's own train-mode semantics)."""
    model, x = _model_for(name), _inputs(name)
    expected = ENTRY_POINTS[name](copy.deepcopy(model), x.clone(), TARGET)
    calls = []
    model.train()
    model[2].register_forward_hook(lambda *a: calls.append(1))
    model[0].register_forward_pre_hook(lambda *a: None)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before, x_before = _state(model), x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.startswith("quantus."):  # Quantus refuses a model in training mode; so do its drop-ins
            _raises_naming(name, ValueError, "training mode", lambda: ENTRY_POINTS[name](model, x, TARGET))
        else:
            got = ENTRY_POINTS[name](model, x, TARGET)
    _same_state(before, _state(model))
    assert torch.equal(x, x_before) and x.grad is None
    if not name.startswith(("captum.", "quantus.")):
        _close(got, expected)


def test_train_mode_warns_once_and_as_given_runs_the_model_in_its_own_mode():
    model, x = cnn().train(), _inputs("saliency")
    with pytest.warns(UserWarning, match="training mode; fastattr runs it in eval mode") as record:
        got = A.saliency(model, x, TARGET)
    assert len([w for w in record if "training mode" in str(w.message)]) == 1
    torch.testing.assert_close(got, A.saliency(cnn(), x, TARGET))
    with fastattr.use_model_mode("as_given"):
        drop = nn.Sequential(*list(cnn())[:3], nn.Flatten(), nn.Linear(6 * 64, CLASSES)).double().train()
        batch_stats = A.saliency(drop, x, TARGET)
    assert drop.training and not torch.allclose(batch_stats, A.saliency(drop.eval(), x, TARGET))
    assert fastattr.get_model_mode() == "eval"
    with pytest.raises(ValueError, match="mode must be one of"):
        with fastattr.use_model_mode("train"):
            pass


@pytest.mark.parametrize("name,case", _cases("rank", "batch", "target", "nan", "empty", "dtype", "tuple"))
def test_bad_inputs_get_an_error_naming_the_argument(name, case):
    model, x = _model_for(name), _inputs(name)
    call, state = ENTRY_POINTS[name], _state(model)
    if case == "rank":  # the error names the argument or the shape it was given
        with pytest.raises((ValueError, TypeError)) as info:
            call(model, x[0], TARGET)
        assert "(3, 8, 8)" in str(info.value) or "x_batch" in str(info.value), str(info.value)
    elif case == "batch":
        _raises_naming(name, ValueError, "target", lambda: call(model, x, TARGET[:2]))
    elif case == "target":
        _raises_naming(name, ValueError, "target", lambda: call(model, x, torch.tensor([0, CLASSES, 1])))
    elif case == "nan":
        for bad in (float("nan"), float("inf")):
            y = x.clone()
            y[1, 0, 2, 2] = bad
            _raises_naming(name, ValueError, "inputs", lambda: call(model, y, TARGET))
    elif case == "empty":
        _raises_naming(name, ValueError, "inputs", lambda: call(model, x[:0], TARGET[:0]))
    elif case == "dtype":
        other = torch.float64 if x.dtype == torch.float32 else torch.float32
        if name.startswith("quantus."):
            return  # Quantus casts x_batch to the model's dtype, as the drop-ins do (tested in test_quantus)
        _raises_naming(name, TypeError, "inputs", lambda: call(model, x.to(other), TARGET))
    elif case == "tuple":
        _raises_naming(name, TypeError, "model", lambda: call(Tuple(model), x, TARGET))
    _same_state(state, _state(model))


@pytest.mark.parametrize("name", [n for n, _ in _cases("layout")])
def test_non_contiguous_and_channels_last_inputs_give_the_same_result(name):
    model, x = _model_for(name), _inputs(name)
    expected = ENTRY_POINTS[name](model, x, TARGET)
    strided = torch.empty(x.shape[0], x.shape[1], x.shape[3], x.shape[2], dtype=x.dtype).transpose(2, 3)
    strided.copy_(x)
    assert not strided.is_contiguous()
    for layout in (strided, x.contiguous(memory_format=torch.channels_last)):
        _close(ENTRY_POINTS[name](model, layout, TARGET), expected)


GLOBAL_NET = None  # the model a module-level function reads as a global


def _through_a_global(z):
    return GLOBAL_NET(z)


class _Wrapper:
    """A callable object holding the model as an attribute."""

    def __init__(self, model):
        self.model = model

    def __call__(self, z):
        return self.model(z)


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "occlusion", "kernel_shap", "deletion",
                                  "infidelity", "evaluate", "captum.Saliency", "captum.FeatureAblation"])
def test_a_model_wrapped_in_a_function_is_guarded_too(name, monkeypatch):
    """``lambda x: net(x)``, a bound ``forward``, a ``functools.partial``, a module-level function that reads
    the model as a global and a callable object holding it reach the same rule: the modules they wrap run
    in eval mode and keep their buffers and flags."""
    import functools

    net = cnn().train()
    monkeypatch.setattr(sys.modules[__name__], "GLOBAL_NET", net)
    x = _inputs(name)
    expected = ENTRY_POINTS[name](cnn(), x, TARGET)
    for wrapped in (lambda z: net(z), net.forward, functools.partial(net.__call__), _through_a_global, _Wrapper(net)):
        before = _state(net)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            got = ENTRY_POINTS[name](wrapped, x, TARGET)
        _same_state(before, _state(net))
        if not name.startswith("captum."):
            assert any("training mode" in str(w.message) for w in record)
            _close(got, expected)


def test_lazy_modules_and_a_second_model_inside_explain_are_handled():
    lazy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d(), nn.Flatten(), nn.LazyLinear(CLASSES)).double()
    x = _inputs("saliency")
    A.feature_ablation(lazy.eval(), x, TARGET, feature_mask=_patches(x))  # materialises and runs
    other = cnn().train()
    state = _state(other)
    M.max_sensitivity(cnn(), x, lambda m, z, t: A.saliency(other, z, t), TARGET, n_samples=2)
    _same_state(state, _state(other))
