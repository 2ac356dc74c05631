"""The Captum drop-ins take what Captum's classes take: several input tensors (each with its own
baselines, masks and windows) for every gradient and perturbation method, compared with captum.attr on a
two-input model (real 8×8 digits and a seeded vector, float64); NoiseTunnel around a captum.attr method;
batch-level outputs, bool and integer inputs, ``attribute_future`` and progress bars in FeatureAblation;
``compute_convergence_delta`` with a number or None as start point; and Captum's AssertionErrors."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

captum = pytest.importorskip("captum")
from captum import attr as cattr  # noqa: E402

from fastattr.integrations import captum as fa  # noqa: E402
from tests.conftest import assert_same_nested  # noqa: E402
from tests.integrations.models import digits  # noqa: E402

TOL = 1e-6


class TwoInputNet(nn.Module):
    """An image branch (conv, ReLU, average pooling) and a vector branch (linear, ReLU) into one head."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu1, self.pool = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)
        self.fc, self.relu2, self.head = nn.Linear(5, 6), nn.ReLU(), nn.Linear(3 * 16 + 6, 4)

    def forward(self, image, vector):
        a = self.pool(self.relu1(self.conv(image))).flatten(1)
        return self.head(torch.cat([a, self.relu2(self.fc(vector))], 1))


def two_inputs():
    torch.manual_seed(11)
    model = TwoInputNet().double().eval()
    image = digits()[0]
    vector = torch.randn(6, 5, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    return model, (image, vector), torch.tensor([0, 1, 2, 3, 0, 1])


def close(ours, theirs, tol=TOL):
    assert_same_nested(ours, theirs, tol)


def bases(xs):
    return (torch.full_like(xs[0][:1], 0.1), torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)[None])


@pytest.mark.parametrize("cls", ["Saliency", "InputXGradient", "GuidedBackprop"])
def test_gradient_methods(cls):
    model, xs, y = two_inputs()
    kwargs = dict(abs=False) if cls == "Saliency" else {}
    close(getattr(fa, cls)(model).attribute(xs, target=y, **kwargs),
          getattr(cattr, cls)(model).attribute(xs, target=y, **kwargs))


def test_integrated_gradients_and_its_delta():
    model, xs, y = two_inputs()
    ours, d_ours = fa.IntegratedGradients(model).attribute(xs, bases(xs), target=y, n_steps=16,
                                                          return_convergence_delta=True)
    ref, d_ref = cattr.IntegratedGradients(model).attribute(xs, bases(xs), target=y, n_steps=16,
                                                            return_convergence_delta=True)
    close(ours, ref)
    torch.testing.assert_close(d_ours, d_ref, rtol=0, atol=1e-6)
    # The completeness gap on its own, from tuples, a number or None as the start point.
    for start in (tuple(b.expand_as(x) for b, x in zip(bases(xs), xs)), (0.0, 0.5)):
        ig = fa.IntegratedGradients(model)
        torch.testing.assert_close(ig.compute_convergence_delta(ours, start, xs, target=y),
                                   cattr.IntegratedGradients(model).compute_convergence_delta(ours, start, xs,
                                                                                              target=y))


def test_gradient_shap_with_captum_draws():
    model, xs, y = two_inputs()
    refs = (digits(3, offset=10)[0], torch.randn(3, 5, generator=torch.Generator().manual_seed(4),
                                                 dtype=torch.float64))
    for stdevs in (0.0, (0.05, 0.2)):
        np.random.seed(3)
        torch.manual_seed(3)
        ours = fa.GradientShap(model).attribute(xs, refs, n_samples=7, stdevs=stdevs, target=y, generator="global")
        np.random.seed(3)
        torch.manual_seed(3)
        close(ours, cattr.GradientShap(model).attribute(xs, refs, n_samples=7, stdevs=stdevs, target=y))


def test_deeplift():
    model, xs, y = two_inputs()
    ours, d_ours = fa.DeepLift(model).attribute(xs, bases(xs), target=y, return_convergence_delta=True)
    ref, d_ref = cattr.DeepLift(model).attribute(xs, bases(xs), target=y, return_convergence_delta=True)
    close(ours, ref)
    torch.testing.assert_close(d_ours, d_ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("to_input", [False, True])
def test_layer_methods(to_input):
    model, xs, y = two_inputs()
    for layer in (model.conv, model.fc):
        close(fa.LayerIntegratedGradients(model, layer).attribute(xs, bases(xs), target=y, n_steps=12,
                                                                  attribute_to_layer_input=to_input),
              cattr.LayerIntegratedGradients(model, layer).attribute(xs, bases(xs), target=y, n_steps=12,
                                                                     attribute_to_layer_input=to_input))
    close(fa.LayerGradCam(model, model.conv).attribute(xs, y, attribute_to_layer_input=to_input),
          cattr.LayerGradCam(model, model.conv).attribute(xs, y, attribute_to_layer_input=to_input))


def test_guided_grad_cam_gives_an_empty_tensor_where_the_map_does_not_fit():
    model, xs, y = two_inputs()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ref = cattr.GuidedGradCam(model, model.conv).attribute(xs, y)
    with pytest.warns(UserWarning, match=r"cannot be upsampled to inputs\[1\]"):
        ours = fa.GuidedGradCam(model, model.conv).attribute(xs, y)
    close(ours[0], ref[0])
    assert ours[1].numel() == 0 == ref[1].numel()


def test_perturbation_methods():
    model, xs, y = two_inputs()
    masks = (torch.arange(16).reshape(1, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3),
             torch.tensor([[16, 16, 17, 3, 3]]))
    for per_eval in (1, 4):
        kwargs = dict(baselines=bases(xs), target=y, perturbations_per_eval=per_eval)
        close(fa.FeatureAblation(model).attribute(xs, feature_mask=masks, **kwargs),
              cattr.FeatureAblation(model).attribute(xs, feature_mask=masks, **kwargs))
        windows = dict(sliding_window_shapes=((1, 3, 3), (2,)), strides=((1, 2, 2), 1))
        ref = cattr.Occlusion(model).attribute(xs, **windows, **kwargs)
        close(fa.Occlusion(model).attribute(xs, **windows, **kwargs), tuple(r.double() for r in ref), 1e-5)


def test_noise_tunnel_several_inputs_and_captum_methods():
    model, xs, y = two_inputs()
    # No noise: the mean of the method over the copies is the method itself.
    for method in (fa.Saliency(model), fa.IntegratedGradients(model), cattr.DeepLift(model)):
        kwargs = dict(target=y) if isinstance(method, fa.Saliency) else dict(target=y, baselines=bases(xs))
        ours = fa.NoiseTunnel(method).attribute(xs, nt_samples=3, stdevs=(0.0, 0.0), **kwargs)
        close(ours, method.attribute(xs, **kwargs))
    # With noise, around a captum.attr method: the noisy copies fastattr draws, attributed by it.
    dl = cattr.DeepLift(model)
    g = torch.Generator().manual_seed(5)
    draws = [[torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs] for _ in range(4)]
    ref = torch.stack([dl.attribute((xs[0] + 0.1 * d[0], xs[1] + 0.3 * d[1]), target=y)[1] for d in draws]).mean(0)
    ours = fa.NoiseTunnel(dl).attribute(xs, nt_samples=4, stdevs=(0.1, 0.3), target=y, generator=5)
    close(ours[1], ref, 1e-10)


def test_feature_ablation_batch_level_outputs():
    model, xs, _ = two_inputs()
    image = xs[0][:3]
    mask = torch.arange(4).reshape(1, 1, 2, 2).repeat_interleave(4, 2).repeat_interleave(4, 3)
    forwards = (lambda x: model(x, xs[1][:3]).sum(), lambda x: model(x, xs[1][:3]).sum().reshape(1),
                lambda x: model(x, xs[1][:3]).sum(0, keepdim=True), lambda x: model(x, xs[1][:3]).sum().item(),
                lambda x: model(x, xs[1][:3]))
    for forward in forwards:
        ours = fa.FeatureAblation(forward).attribute(image, feature_mask=mask)
        close(ours, cattr.FeatureAblation(forward).attribute(image, feature_mask=mask))
    with pytest.raises(AssertionError, match="perturbations_per_eval"):
        fa.FeatureAblation(forwards[0]).attribute(image, feature_mask=mask, perturbations_per_eval=2)


def test_feature_ablation_bool_and_integer_inputs():
    weights = torch.tensor([[3.0, -1.0, 2.0, 0.5]], dtype=torch.float64)

    def on_bool(flags):
        return flags.double() @ weights.T

    def on_ints(ids, x):
        return (ids * torch.tensor([2, -3, 1, 4])).sum(1) + x.sum(1).long()

    flags = torch.tensor([[True, False, True, True], [False, True, True, False]])
    for baselines in (None, True):
        close(fa.FeatureAblation(on_bool).attribute(flags, target=0, baselines=baselines),
              cattr.FeatureAblation(on_bool).attribute(flags, target=0, baselines=baselines))
    ids, x = torch.tensor([[4, 1, 0, 2], [3, 3, 1, 0]]), torch.tensor([[5.0, 2.0], [1.0, 7.0]])
    ours = fa.FeatureAblation(on_ints).attribute((ids, x))
    ref = cattr.FeatureAblation(on_ints).attribute((ids, x))
    close(ours, ref)
    assert ours[0].dtype == torch.int64


def test_attribute_future_and_progress(capsys):
    model, xs, y = two_inputs()

    def future_model(image, vector):
        done = torch.futures.Future()
        done.set_result(model(image, vector))
        return done
    ours = fa.FeatureAblation(future_model).attribute_future(xs, target=y).wait()
    close(ours, cattr.FeatureAblation(model).attribute(xs, target=y))
    with pytest.raises(AssertionError, match="attribute_future"):
        fa.FeatureAblation(future_model).attribute(xs)
    with pytest.raises(AssertionError, match="Future"):
        fa.FeatureAblation(model).attribute_future(xs, target=y)
    for method in (fa.Saliency(model), fa.IntegratedGradients(model), fa.Occlusion(model)):
        with pytest.raises(NotImplementedError):
            method.attribute_future(xs, target=y)
    fa.FeatureAblation(model).attribute(xs, target=y, show_progress=True)
    fa.Occlusion(model).attribute(xs, ((1, 4, 4), (5,)), target=y, show_progress=True)
    err = capsys.readouterr().err
    assert "Feature Ablation attribution: 100%" in err and "Occlusion attribution: 100%" in err


def test_errors_are_assertion_errors_too():
    model, xs, y = two_inputs()
    image = xs[0]
    calls = (lambda: fa.Occlusion(model).attribute(xs, ((1, 2),), target=y),
             lambda: fa.Occlusion(model).attribute(xs, ((1, 2, 2), (2,)), strides=((1, 3, 3), 1), target=y),
             lambda: fa.IntegratedGradients(model).attribute(xs, n_steps=4),
             lambda: fa.Saliency(model).attribute(xs, target=(1, 2)),
             lambda: fa.IntegratedGradients(model).attribute(xs, baselines=(0.0, 0.0, 0.0), target=y),
             lambda: fa.FeatureAblation(model).attribute(xs, target=y, perturbations_per_eval=0),
             lambda: fa.GradientShap(model).compute_convergence_delta(image, image[:2], image, target=y))
    for call in calls:
        with pytest.raises(AssertionError) as caught:
            call()
        assert isinstance(caught.value, ValueError)


def test_inputs_left_untouched_and_single_input_unchanged():
    model, xs, y = two_inputs()
    copies = tuple(x.clone() for x in xs)
    fa.IntegratedGradients(model).attribute(xs, target=y, n_steps=4)
    fa.FeatureAblation(model).attribute(xs, target=y)
    assert all(torch.equal(a, b) for a, b in zip(xs, copies)) and not any(x.requires_grad for x in xs)
    kwargs = dict(target=y, n_steps=8, additional_forward_args=(xs[1],))
    close(fa.IntegratedGradients(model).attribute((xs[0],), **kwargs),
          cattr.IntegratedGradients(model).attribute((xs[0],), **kwargs))
