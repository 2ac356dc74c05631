"""GradientShap, LayerIntegratedGradients, LayerGradCam, GuidedBackprop and GuidedGradCam from
fastattr.integrations.captum give Captum's values (relative error ≤ 1e-5 in float64) on a CNN with
BatchNorm and max-pool, an MLP, a residual block and an LSTM text classifier (through its embedding).

GradientShap is noisy. With ``generator="global"`` the adapter draws from the global NumPy / torch
RNGs with Captum's calls in Captum's order, so after seeding both the same way the two agree to
rounding, and leave the global RNGs in the same state. Its default stream (fastattr's seeded
generator) is checked against a hand computation from Captum's ``Saliency`` at the documented draws.
"""
import numpy as np
import pytest
import torch
from torch import nn

captum = pytest.importorskip("captum")
from captum import attr as cattr  # noqa: E402

import fastattr  # noqa: E402
from fastattr.attribution import gradient_shap, smoothgrad  # noqa: E402
from fastattr.integrations import captum as fa  # noqa: E402
from tests.attribution.test_layer import text_model, token_ids  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.integrations.test_captum import Gated, case, close, close_delta, digits  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning")
MODELS = ["cnn", "mlp", "residual"]


def refs_for(x, m=7, seed=0):
    return torch.rand((m,) + tuple(x.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def seeded(fn, seed=3):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn()


def rng_state():
    return torch.rand(3), np.random.rand(3)


# ---------------------------------------------------------------- GradientShap

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("stdev", [0.0, 0.2])
def test_gradient_shap_same_draws_as_captum(name, stdev):
    model, x, y = case(name)
    refs = refs_for(x)
    for mbi in (True, False):
        kw = dict(n_samples=6, stdevs=stdev, target=y, return_convergence_delta=True)
        ref, d_ref = seeded(lambda: cattr.GradientShap(model, multiply_by_inputs=mbi).attribute(
            x, refs, **kw))
        after_ref = rng_state()
        ours, d_ours = seeded(lambda: fa.GradientShap(model, multiply_by_inputs=mbi).attribute(
            x, refs, generator="global", **kw))
        after_ours = rng_state()
        close(ours, ref)
        assert d_ours.shape == d_ref.shape == (x.shape[0] * 6,)
        torch.testing.assert_close(d_ours, d_ref, rtol=1e-9, atol=1e-12)
        assert torch.equal(after_ours[0], after_ref[0]) and np.array_equal(after_ours[1], after_ref[1])
    # A different seed gives different draws, so the agreement above is not a coincidence.
    other = seeded(lambda: fa.GradientShap(model).attribute(x, refs, n_samples=6, stdevs=stdev, target=y,
                                                            generator="global"), seed=4)
    assert rel_err(other, ref) > 1e-3


def test_gradient_shap_baseline_forms_targets_and_extra_args():
    model, x, y = case("cnn")
    refs = refs_for(x, 5, seed=1)
    for baselines in ((refs,), lambda: refs, lambda inp: inp[0][:3] * 0.5):
        ref = seeded(lambda: cattr.GradientShap(model).attribute((x,), baselines, n_samples=4, target=y))
        ours = seeded(lambda: fa.GradientShap(model).attribute((x,), baselines, n_samples=4, target=y,
                                                               generator="global"))
        close(ours, ref)
    for target in (3, y.tolist(), torch.tensor(2)):
        close(seeded(lambda: fa.GradientShap(model).attribute(x, refs, target=target, generator="global")),
              seeded(lambda: cattr.GradientShap(model).attribute(x, refs, target=target)))
    gated = Gated().double().eval()
    xg, yg = digits(5, offset=30)
    args = (torch.linspace(0.5, 2.0, 5, dtype=torch.float64)[:, None], 0.3)
    kw = dict(n_samples=3, stdevs=0.1, target=yg, additional_forward_args=args)
    close(seeded(lambda: fa.GradientShap(gated).attribute(xg, refs_for(xg), generator="global", **kw)),
          seeded(lambda: cattr.GradientShap(gated).attribute(xg, refs_for(xg), **kw)))


def test_gradient_shap_default_stream_is_the_documented_draws():
    """fastattr's stream: per sample, an index per example, α per example, then N(0, 1) noise × σ."""
    model, x, y = case("mlp")
    refs, n, stdev = refs_for(x), 5, 0.15
    ours = fa.GradientShap(model).attribute(x, refs, n_samples=n, stdevs=stdev, target=y, generator=7)
    g = torch.Generator().manual_seed(7)
    sal, total = cattr.Saliency(model), torch.zeros_like(x)
    for _ in range(n):
        b = refs[torch.randint(refs.shape[0], (x.shape[0],), generator=g)]
        alpha = torch.rand(x.shape[0], generator=g, dtype=torch.float64).view(-1, 1, 1, 1)
        noisy = x + torch.randn(x.shape, generator=g, dtype=x.dtype) * stdev
        total += (noisy - b) * sal.attribute(b + alpha * (noisy - b), target=y, abs=False)
    close(ours, total / n, 1e-12)
    close(ours, gradient_shap(model, x, y, baselines=refs, n_samples=n, stdev=stdev, generator=7,
                              noisy_difference=True), 1e-12)
    assert torch.equal(ours, fa.GradientShap(model).attribute(x, refs, n_samples=n, stdevs=stdev, target=y,
                                                              generator=torch.Generator().manual_seed(7)))


def test_gradient_shap_delta_is_completeness_per_draw():
    model, x, y = case("residual")
    refs = refs_for(x)
    attr, delta = fa.GradientShap(model, multiply_by_inputs=True).attribute(
        x, refs, n_samples=3, target=y, return_convergence_delta=True, generator=1)
    assert attr.shape == x.shape and delta.shape == (3 * x.shape[0],)
    # One α per draw is a one-point estimate of the path integral: deltas are O(f), not 0.
    assert delta.abs().max() > 1e-3


# ---------------------------------------------------------------- LayerIntegratedGradients

@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left"])
def test_layer_ig_lstm_embedding_matches_captum(method):
    model, ids = text_model("lstm"), token_ids(5, 7, seed=3)
    pads = torch.zeros_like(ids)
    for target in (1, torch.tensor([0, 1, 2, 1, 0])):
        kw = dict(baselines=pads, target=target, n_steps=24, method=method, return_convergence_delta=True)
        ours, d_ours = fa.LayerIntegratedGradients(model, model.embedding).attribute(ids, **kw)
        ref, d_ref = cattr.LayerIntegratedGradients(model, model.embedding).attribute(ids, **kw)
        close(ours, ref)
        close_delta(d_ours, d_ref, ref)
    # The same path seen as the LSTM's input, in chunks of 7 inputs.
    ours = fa.LayerIntegratedGradients(model, model.lstm).attribute(
        (ids,), baselines=(pads,), target=2, n_steps=16, attribute_to_layer_input=True, internal_batch_size=7)
    close(ours, cattr.LayerIntegratedGradients(model, model.lstm).attribute(
        (ids,), baselines=(pads,), target=2, n_steps=16, attribute_to_layer_input=True))


@pytest.mark.parametrize("name,layer,to_input", [("cnn", 1, False), ("cnn", 4, True), ("mlp", 3, False),
                                                 ("mlp", 5, True), ("residual", "fc1", False),
                                                 ("residual", "fc2", True)])
def test_layer_ig_matches_captum(name, layer, to_input):
    model, x, y = case(name)
    module = getattr(model, layer) if isinstance(layer, str) else model[layer]
    for mbi, baselines in ((True, 0.1), (False, refs_for(x, 1, seed=2))):
        kw = dict(baselines=baselines, target=y, n_steps=12, return_convergence_delta=True,
                  attribute_to_layer_input=to_input)
        ours, d_ours = fa.LayerIntegratedGradients(model, module, multiply_by_inputs=mbi).attribute(x, **kw)
        ref, d_ref = cattr.LayerIntegratedGradients(model, module, multiply_by_inputs=mbi).attribute(x, **kw)
        close(ours, ref)
        close_delta(d_ours, d_ref, ref)


def test_layer_ig_additional_forward_args_and_tuple_targets():
    model = Gated().double().eval()
    x, y = digits(6, offset=40)
    args = (torch.linspace(0.5, 2.0, 6, dtype=torch.float64)[:, None], -0.2)
    for size in (None, 4):
        kw = dict(target=y, additional_forward_args=args, n_steps=9, internal_batch_size=size)
        close(fa.LayerIntegratedGradients(model, model.body[1]).attribute(x, **kw),
              cattr.LayerIntegratedGradients(model, model.body[1]).attribute(x, **kw))
    torch.manual_seed(9)
    grid = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Unflatten(1, (3, 4))).double().eval()
    for target in ((2, 1), [(0, 0), (1, 2), (2, 3), (0, 1), (2, 2), (1, 1)]):
        # internal_batch_size=5 splits the batch of 6: chunks need not hold whole batches here.
        close(fa.LayerIntegratedGradients(grid, grid[1]).attribute(x, target=target, n_steps=8,
                                                                   internal_batch_size=5),
              cattr.LayerIntegratedGradients(grid, grid[1]).attribute(x, target=target, n_steps=8))
        close(fa.IntegratedGradients(grid).attribute(x, target=target, n_steps=8, internal_batch_size=5),
              cattr.IntegratedGradients(grid).attribute(x, target=target, n_steps=8))


# ---------------------------------------------------------------- Grad-CAM, guided backprop

@pytest.mark.parametrize("name,layer", [("cnn", 4), ("cnn", 0), ("mlp", 3), ("residual", "fc1")])
def test_layer_grad_cam_matches_captum(name, layer):
    model, x, y = case(name)
    module = getattr(model, layer) if isinstance(layer, str) else model[layer]
    for relu in (False, True):
        for summation in (True, False):
            for to_input in ((False, True) if name == "cnn" and layer == 4 else (False,)):
                kw = dict(relu_attributions=relu, attr_dim_summation=summation,
                          attribute_to_layer_input=to_input)
                ours = fa.LayerGradCam(model, module).attribute(x, y, **kw)
                close(ours, cattr.LayerGradCam(model, module).attribute(x, y, **kw))
    ours = fa.LayerGradCam(model, module).attribute((x,), target=y)
    assert isinstance(ours, torch.Tensor)
    close(ours, cattr.LayerGradCam(model, module).attribute((x,), target=y))
    if ours.dim() == 4:
        close(fa.LayerGradCam.interpolate(ours, (8, 8), "bilinear"),
              cattr.LayerGradCam.interpolate(ours, (8, 8), "bilinear"))


@pytest.mark.parametrize("name", MODELS)
def test_guided_backprop_matches_captum(name):
    model, x, y = case(name)
    close(fa.GuidedBackprop(model).attribute(x, y), cattr.GuidedBackprop(model).attribute(x, y))
    close(fa.GuidedBackprop(model).attribute((x,), target=3),
          cattr.GuidedBackprop(model).attribute((x,), target=3))
    if name == "cnn":  # the CNN's nn.ReLU is hooked: guided backprop is not the plain gradient there
        plain = cattr.Saliency(model).attribute(x, y, abs=False)
        assert rel_err(fa.GuidedBackprop(model).attribute(x, y), plain) > 0.05


def test_guided_grad_cam_matches_captum():
    model, x, y = case("cnn")
    for mode in ("nearest", "bilinear", "bicubic"):
        for to_input in (False, True):
            kw = dict(interpolate_mode=mode, attribute_to_layer_input=to_input)
            close(fa.GuidedGradCam(model, model[4]).attribute(x, y, **kw),
                  cattr.GuidedGradCam(model, model[4]).attribute(x, y, **kw))
    close(fa.GuidedGradCam(model, model[0]).attribute((x,), target=5),
          cattr.GuidedGradCam(model, model[0]).attribute((x,), target=5))


def test_noise_tunnel_around_the_new_methods_without_noise():
    model, x, y = case("cnn")
    refs = refs_for(x, 1)
    pairs = [("GuidedBackprop", (model,), {}), ("LayerGradCam", (model, model[4]), {}),
             ("LayerIntegratedGradients", (model, model[1]), dict(n_steps=6, baselines=refs))]
    for cls, args, kw in pairs:
        kw.update(nt_samples=3, stdevs=0.0, target=y)
        ours = fa.NoiseTunnel(getattr(fa, cls)(*args)).attribute(x, **kw)
        ref = cattr.NoiseTunnel(getattr(cattr, cls)(*args)).attribute(x, **kw)
        close(ours, ref)


def test_properties_like_captum():
    model, x, _ = case("cnn")
    pairs = [("GradientShap", (model,)), ("GradientShap", (model, False)),
             ("LayerIntegratedGradients", (model, model[1])),
             ("LayerIntegratedGradients", (model, model[1], None, False)),
             ("LayerGradCam", (model, model[4])),
             ("GuidedBackprop", (model,)), ("GuidedGradCam", (model, model[4]))]
    for cls, args in pairs:
        ours, ref = getattr(fa, cls)(*args), getattr(cattr, cls)(*args)
        assert ours.has_convergence_delta() == ref.has_convergence_delta()
        assert ours.multiplies_by_inputs == ref.multiplies_by_inputs
        assert fa.NoiseTunnel(ours).has_convergence_delta() == cattr.NoiseTunnel(ref).has_convergence_delta()


# ---------------------------------------------------------------- NoiseTunnel(Saliency) with abs

def test_noise_tunnel_saliency_abs_runs_fused_smoothgrad(monkeypatch):
    """Captum's default ``abs=True`` goes through fastattr.smoothgrad(abs=True), not the generic loop."""
    model, x, y = case("cnn")

    def no_loop(*args, **kwargs):
        raise AssertionError("the generic noise loop ran")

    monkeypatch.setattr(fa.NoiseTunnel, "_noise_loop", no_loop)
    g = torch.Generator().manual_seed(5)
    noisy = [x + 0.2 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(9)]
    grads = torch.stack([cattr.Saliency(model).attribute(z, target=y, abs=False) for z in noisy])
    expected = {"smoothgrad": grads.abs().mean(0), "smoothgrad_sq": (grads ** 2).mean(0),
                "vargrad": (grads ** 2).mean(0) - grads.abs().mean(0) ** 2}
    for nt_type, want in expected.items():
        ours = fa.NoiseTunnel(fa.Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=9,
                                                            nt_samples_batch_size=4, stdevs=0.2, target=y,
                                                            generator=5)
        close(ours, want, 1e-12)
        fused = smoothgrad(model, x, y, n_samples=9, stdev=0.2, variant=nt_type, abs=True, generator=5)
        close(ours, fused, 1e-12)
    # Without noise, Captum's value exactly.
    close(fa.NoiseTunnel(fa.Saliency(model)).attribute(x, nt_samples=3, stdevs=0.0, target=y),
          cattr.NoiseTunnel(cattr.Saliency(model)).attribute(x, nt_samples=3, stdevs=0.0, target=y))


# ---------------------------------------------------------------- bad input

def test_unsupported_captum_arguments_raise():
    model, x, y = case("cnn")
    with pytest.raises(ValueError, match="grad_kwargs"):
        fa.LayerIntegratedGradients(model, model[1]).attribute(x, target=y, grad_kwargs={"inputs": x})
    with pytest.raises(TypeError, match="grad_kwargs"):
        fa.LayerGradCam(model, model[4]).attribute(x, y, grad_kwargs=[("create_graph", True)])
    with pytest.raises(NotImplementedError, match="device_ids"):
        fa.LayerGradCam(model, model[4], device_ids=[0])
    with pytest.raises(NotImplementedError, match="device_ids"):
        fa.GuidedGradCam(model, model[4], device_ids=[0])
    with pytest.raises(NotImplementedError, match="one layer"):
        fa.LayerGradCam(model, [model[1], model[4]])
    with pytest.raises(TypeError, match="list"):
        fa.LayerIntegratedGradients(model, [])
    with pytest.raises(TypeError, match="layer must be an nn.Module"):
        fa.LayerGradCam(model, "4")
    with pytest.raises(TypeError, match="nn.Module"):
        fa.GuidedBackprop(lambda z: model(z))
    with pytest.raises(ValueError, match="generator"):
        fa.GradientShap(model).attribute(x, refs_for(x), target=y, generator="numpy")
    with pytest.raises(ValueError, match="baselines must be a tensor"):
        fa.GradientShap(model).attribute(x, 0.0, target=y)
    with pytest.raises(ValueError, match="stdevs"):
        fa.GradientShap(model).attribute(x, refs_for(x), stdevs=-1.0, target=y)
    with pytest.raises(ValueError, match="n_samples"):
        fa.GradientShap(model).attribute(x, refs_for(x), n_samples=0, target=y)
    with pytest.raises(TypeError, match="attr_dim_summation"):
        fa.LayerGradCam(model, model[4]).attribute(x, y, attr_dim_summation=1)
    with pytest.raises(ValueError, match="interpolate_mode"):
        fa.GuidedGradCam(model, model[4]).attribute(x, y, interpolate_mode="cubic")
    text = text_model("bag")
    with pytest.raises(TypeError, match="floating"):
        fa.LayerIntegratedGradients(text, text.embedding).attribute(token_ids(), target=0,
                                                                    attribute_to_layer_input=True)


# ---------------------------------------------------------------- 1-D and 3-D convolutions, API extras

def conv_model(dims: int) -> nn.Module:
    """A small Conv1d / Conv3d classifier in float64."""
    conv, pool = {1: (nn.Conv1d, nn.AdaptiveAvgPool1d), 3: (nn.Conv3d, nn.AdaptiveAvgPool3d)}[dims]
    torch.manual_seed(dims)
    return nn.Sequential(conv(2, 4, 3, padding=1), nn.ReLU(), conv(4, 5, 3, stride=2), nn.ReLU(), pool(1),
                         nn.Flatten(), nn.Linear(5, 3)).double().eval()


@pytest.mark.parametrize("dims,shape", [(1, (4, 2, 16)), (3, (3, 2, 6, 6, 6))])
def test_grad_cam_on_1d_and_3d_convolutions_matches_captum(dims, shape):
    model = conv_model(dims)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(dims), dtype=torch.float64)
    y = torch.arange(shape[0]) % 3
    for mode in ("nearest", ("linear", "trilinear")[dims == 3]):
        ref = cattr.GuidedGradCam(model, model[2]).attribute(x, y, interpolate_mode=mode)
        ours = fa.GuidedGradCam(model, model[2]).attribute(x, y, interpolate_mode=mode)
        assert ref.abs().sum() > 0
        close(ours, ref)
        cam = cattr.LayerGradCam(model, model[2]).attribute(x, y)
        close(fa.LayerGradCam(model, model[2]).attribute(x, y), cam)
        close(fa.LayerGradCam.interpolate(cam, shape[2:], mode), cattr.LayerGradCam.interpolate(cam, shape[2:], mode))


def test_noise_tunnel_draws_fresh_gradient_shap_samples_per_batch():
    """NoiseTunnel(GradientShap) passes its generator on: every block of noisy copies draws new α's,
    baselines and noise (VarGrad over them is not 0), and a different seed gives other draws."""
    model, x, y = case("cnn")
    method = fa.NoiseTunnel(fa.GradientShap(model))
    kw = dict(baselines=refs_for(x, 4), nt_type="vargrad", nt_samples=4, nt_samples_batch_size=1, stdevs=0.0,
              target=y)
    first = method.attribute(x, generator=5, **kw)
    assert first.abs().sum() > 0
    assert torch.equal(first, method.attribute(x, generator=5, **kw))
    assert not torch.equal(first, method.attribute(x, generator=6, **kw))


def test_numpy_counts_delta_and_name_like_captum():
    model, x, y = case("cnn")
    refs = refs_for(x, 1)
    ours = fa.IntegratedGradients(model).attribute(x, refs, y, n_steps=np.int64(6), internal_batch_size=np.int64(9))
    close(ours, cattr.IntegratedGradients(model).attribute(x, refs, y, n_steps=6, internal_batch_size=9))
    ig = cattr.IntegratedGradients(model)
    close(fa.IntegratedGradients(model).compute_convergence_delta(ours, refs, x, target=y),
          ig.compute_convergence_delta(ours, refs, x, target=y))
    smooth = fa.NoiseTunnel(fa.Saliency(model)).attribute(x, nt_samples=np.int64(3), target=y, stdevs=0.0)
    close(smooth, cattr.Saliency(model).attribute(x, y))
    for cls in ("IntegratedGradients", "NoiseTunnel", "LayerGradCam", "GuidedGradCam"):
        assert getattr(fa, cls).get_name() == getattr(cattr, cls).get_name()
    with pytest.raises(ValueError, match="internal_batch_size must be an int >= 1"):
        fa.IntegratedGradients(model).attribute(x, refs, y, internal_batch_size=0)


def test_attributions_carry_no_graph_of_the_inputs():
    model, x, y = case("cnn")
    x = x.clone().requires_grad_(True)
    refs = refs_for(x.detach(), 3)
    outs = [fa.InputXGradient(model).attribute(x, y), fa.GradientShap(model).attribute(x, refs, target=y),
            *fa.IntegratedGradients(model).attribute(x, refs[:1], y, n_steps=4, return_convergence_delta=True),
            fa.NoiseTunnel(fa.IntegratedGradients(model)).attribute(x, nt_samples=2, target=y, n_steps=4)]
    assert all(not o.requires_grad for o in outs) and x.grad is None


def test_batch_statistics_see_captums_one_forward():
    """A BatchNorm in training mode normalises over the forward it is in: without ``internal_batch_size``
    Captum runs all ``n_steps · B`` path points in one, and so do the drop-ins (2,000 rows here, above the
    chunk fastattr would choose), with the model's buffers left as they were."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 10)).double().train()
    x = torch.cat([digits()[0]] * 5)[:40]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for ours_of, ref_of in [(fa.IntegratedGradients, cattr.IntegratedGradients),
                            (lambda m: fa.LayerIntegratedGradients(m, m[0]),
                             lambda m: cattr.LayerIntegratedGradients(m, m[0]))]:
        ours = ours_of(model).attribute(x, target=3)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        ref = ref_of(model).attribute(x, target=3)
        model.load_state_dict(state)
        assert rel_err(ours, ref) < 1e-8, rel_err(ours, ref)
    mlp = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)).double().train()
    flat = x[:6].flatten(1)
    ref = cattr.LayerIntegratedGradients(mlp, mlp[0]).attribute(flat, target=3, n_steps=4)
    with fastattr.use_model_mode("as_given"):  # fastattr's own: one baseline row per example, as Captum's
        own = fastattr.layer_integrated_gradients(mlp, flat, target=3, layer=mlp[0], n_steps=4)
    assert rel_err(own, ref) < 1e-7  # Captum's quadrature in float32


def test_one_example_through_batch_statistics():
    """One example: Captum's forward of its ``n_steps`` path points normalises over them, and the forward that
    checks the target's range runs two copies of it (batch statistics need two rows)."""
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 10)).double().train()
    x = digits()[0][:1].flatten(1)
    ours, ref = fa.IntegratedGradients(model).attribute(x, target=3, n_steps=10), \
        cattr.IntegratedGradients(model).attribute(x, target=3, n_steps=10)
    assert ref.abs().sum() > 0 and rel_err(ours, ref) < 1e-7


def test_dropout_in_training_mode_draws_captums_masks():
    """Under the same seed the gradient drop-ins run Captum's forwards on a model with dropout in training
    mode, and the forward that checks a given target's range leaves the global RNG where it was, so every
    dropout mask, and every value, is Captum's."""
    torch.manual_seed(13)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10)
                          ).double().train()
    x = digits()[0]
    for name in ("Saliency", "InputXGradient", "IntegratedGradients"):
        torch.manual_seed(4)
        ours = getattr(fa, name)(model).attribute(x, target=2)
        torch.manual_seed(4)
        ref = getattr(cattr, name)(model).attribute(x, target=2)
        assert rel_err(ours, ref) < 1e-8, (name, rel_err(ours, ref))
    for ours_of, ref_of in [(fa.IntegratedGradients, cattr.IntegratedGradients),
                            (lambda m: fa.LayerIntegratedGradients(m, m[1]),
                             lambda m: cattr.LayerIntegratedGradients(m, m[1]))]:
        torch.manual_seed(4)   # the delta's forwards too: the baselines', then the inputs', as Captum's
        ours = ours_of(model).attribute(x, target=2, n_steps=8, return_convergence_delta=True)
        torch.manual_seed(4)
        ref = ref_of(model).attribute(x, target=2, n_steps=8, return_convergence_delta=True)
        # Captum takes its quadrature in float32: ~1e-8 apart
        assert rel_err(ours[0], ref[0]) < 1e-7 and rel_err(ours[1], ref[1]) < 1e-6, rel_err(ours[1], ref[1])
    refs = torch.rand((4,) + x.shape[1:], generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    out = []
    for shap, extra in ((fa.GradientShap, {"generator": "global"}), (cattr.GradientShap, {})):
        torch.manual_seed(4)
        np.random.seed(4)   # Captum's rows, example-major: each draws its own mask
        out.append(shap(model).attribute(x, refs, target=2, n_samples=3, stdevs=0.05, return_convergence_delta=True,
                                         **extra))
    assert rel_err(out[0][0], out[1][0]) < 1e-8 and rel_err(out[0][1], out[1][1]) < 1e-8


@pytest.mark.parametrize("inner, kwargs", [
    ("Saliency", {"nt_samples": 7, "stdevs": 0.2}),
    ("Saliency", {"nt_samples": 7, "nt_samples_batch_size": 3, "stdevs": 0.2, "nt_type": "vargrad"}),
    ("IntegratedGradients", {"nt_samples": 5, "nt_samples_batch_size": 2, "stdevs": 0.1, "n_steps": 8,
                             "nt_type": "smoothgrad_sq"}),
    ("InputXGradient", {"nt_samples": 4, "stdevs": 0.3}),
    ("GradientShap", {"nt_samples": 5, "nt_samples_batch_size": 2, "stdevs": 0.1, "draw_baseline_from_distrib": True,
                      "baselines": "distribution"})])
def test_noise_tunnel_global_draws_are_captums(inner, kwargs):
    """``generator="global"``: the noise from ``torch.normal`` on the global RNG, per partition and input, and
    ``draw_baseline_from_distrib``'s rows (and an inner GradientShap's draws) from ``np.random``, in Captum's
    calls: after the same seeds, Captum's values."""
    model, x, y = case("cnn")
    if kwargs.get("baselines") == "distribution":
        kwargs = {**kwargs, "baselines": torch.rand((4,) + x.shape[1:], generator=torch.Generator().manual_seed(9),
                                                    dtype=x.dtype)}
    out = []
    for lib, extra in ((cattr, {}), (fa, {"generator": "global"})):
        torch.manual_seed(3)
        np.random.seed(3)
        out.append(lib.NoiseTunnel(getattr(lib, inner)(model)).attribute(x, target=y, **kwargs, **extra))
    assert out[0].abs().sum() > 0
    assert rel_err(out[1], out[0]) < 1e-7, rel_err(out[1], out[0])
    with pytest.raises(ValueError, match="generator"):
        fa.NoiseTunnel(fa.Saliency(model)).attribute(x, target=y, generator="numpy")


def test_guided_grad_cam_on_two_inputs_runs_captums_forwards_in_order():
    """Several inputs: Grad-CAM's forward, then guided backprop's, as Captum runs them, so a model with dropout
    in training mode draws the same masks."""
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(15)
            self.conv, self.drop = nn.Conv2d(1, 3, 3), nn.Dropout(0.5)
            self.side, self.out = nn.Linear(4, 108), nn.Linear(108, 3)

        def forward(self, image, vector):
            return self.out(self.drop(torch.relu(self.conv(image)).flatten(1) + self.side(vector)))

    model = Two().double().train()
    pair = (digits()[0][:4], torch.randn(4, 4, generator=torch.Generator().manual_seed(16), dtype=torch.float64))
    out = []
    for lib in (fa, cattr):
        torch.manual_seed(7)
        out.append(lib.GuidedGradCam(model, model.conv).attribute(pair, target=1)[0])
    assert out[1].abs().sum() > 0 and rel_err(out[0], out[1]) < 1e-8
