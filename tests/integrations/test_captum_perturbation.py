"""fastattr's Occlusion and FeatureAblation are drop-ins for captum.attr's: the same values (relative error
≤ 1e-5 in float64; Captum's Occlusion rounds its result to float32, so ~1e-8 in practice), shapes and
return types, on a CNN with BatchNorm and max-pooling and an MLP (real 8×8 digits) and a residual
block (seeded Gaussians), over window / stride / baseline / feature-mask settings, targets, several
input tensors and additional forward arguments."""
import functools

import pytest
import torch
from torch import nn

captum = pytest.importorskip("captum")
from captum import attr as cattr  # noqa: E402

from fastattr.integrations import _captum_perturbation as fa  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.integrations.models import Residual, cnn, digits, mlp  # noqa: E402

TOL = 1e-5


class TwoInputs(nn.Module):
    """An image and a vector, and a per-example scale passed as an additional forward argument."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 3, 3, padding=1), nn.Linear(3 * 16 + 5, 4)

    def forward(self, image, vector, scale):
        feats = nn.functional.max_pool2d(torch.relu(self.conv(image)), 2).flatten(1)
        return self.fc(torch.cat([feats, vector * scale], 1))


@functools.lru_cache(maxsize=None)
def case(name: str):
    """(model, inputs, targets)."""
    if name == "residual":
        torch.manual_seed(2)
        x = torch.randn(6, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return Residual().double().eval(), x, torch.tensor([0, 1, 2, 3, 4, 0])
    x = digits()[0]
    return (cnn() if name == "cnn" else mlp()), x, torch.tensor([0, 1, 2, 3, 4, 5])


def close(ours, ref, x):
    """Same values, shape and container; dtype of the inputs (Captum's Occlusion gives float32)."""
    assert type(ours) is type(ref)
    if isinstance(ours, tuple):
        assert len(ours) == len(ref)
        for u, v, xi in zip(ours, ref, x):
            close(u, v, xi)
        return
    assert ours.shape == ref.shape and ours.dtype == x.dtype
    assert ref.abs().sum() > 0
    assert rel_err(ours, ref) <= TOL, rel_err(ours, ref)


IMAGE_OCCLUSION = [((1, 2, 2), None, None), ((1, 3, 3), (1, 2, 2), 0.5), ((1, 4, 4), 4, "plane"),
                   ((1, 3, 5), (1, 1, 3), "per_example"), ((1, 8, 8), 1, None)]
VECTOR_OCCLUSION = [((3,), 2, None), ((4,), (3,), 0.2), ((16,), 1, "plane"), ((1,), None, "per_example")]


def baseline(kind, x):
    if kind == "plane":
        return torch.linspace(-0.5, 0.5, x[0].numel(), dtype=x.dtype).reshape((1,) + tuple(x.shape[1:]))
    if kind == "per_example":
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    return kind


@pytest.mark.parametrize("name,setting", [(n, s) for n in ("cnn", "mlp") for s in IMAGE_OCCLUSION]
                         + [("residual", s) for s in VECTOR_OCCLUSION])
@pytest.mark.parametrize("per_eval", [1, 5])
def test_occlusion_matches_captum(name, setting, per_eval):
    model, x, y = case(name)
    window, strides, kind = setting
    base = baseline(kind, x)
    ref = cattr.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=strides, baselines=base,
                                           target=y, perturbations_per_eval=per_eval)
    ours = fa.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=strides, baselines=base,
                                         target=y, perturbations_per_eval=per_eval)
    close(ours, ref, x)


def segments(kind, x):
    if kind == "patches" and x.dim() == 4:
        return (torch.arange(16).reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1))[None, None]
    if kind == "patches":
        return torch.arange(16).reshape(1, 16) // 4
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, 7, (x.shape[0],) + tuple(x.shape[1:]), generator=g)


@pytest.mark.parametrize("name", ["cnn", "mlp", "residual"])
@pytest.mark.parametrize("mask_kind,base_kind", [(None, None), ("patches", 0.3),
                                                 ("per_example", "per_example"), ("patches", "plane")])
def test_feature_ablation_matches_captum(name, mask_kind, base_kind):
    model, x, y = case(name)
    mask = None if mask_kind is None else segments(mask_kind, x)
    base = baseline(base_kind, x)
    for per_eval in (1, 4):
        ref = cattr.FeatureAblation(model).attribute(x, baselines=base, target=y, feature_mask=mask,
                                                     perturbations_per_eval=per_eval)
        ours = fa.FeatureAblation(model).attribute(x, baselines=base, target=y, feature_mask=mask,
                                                   perturbations_per_eval=per_eval)
        assert ours.dtype == ref.dtype
        close(ours, ref, x)


@pytest.mark.parametrize("target", [3, [1, 0, 2, 3, 4, 4], torch.tensor([4, 3, 2, 1, 0, 0]), torch.tensor(2)])
def test_target_forms(target):
    model, x, _ = case("residual")
    for cls, kwargs in ((cattr.Occlusion, dict(sliding_window_shapes=(2,))), (cattr.FeatureAblation, {})):
        ref = cls(model).attribute(x, target=target, **kwargs)
        ours = getattr(fa, cls.__name__)(model).attribute(x, target=target, **kwargs)
        close(ours, ref, x)


def test_occlusion_without_a_target_gives_captums_per_output_attributions():
    """``target=None``: a model with several outputs per example (or one for the whole batch) gets one row per
    output element, ``[n_outputs, ...]``, averaged over the windows that cover each element; one output per
    example is explained as it is. Captum's values and shapes, for one input and a tuple."""
    model, x, _ = case("cnn")
    for forward, kwargs in [(model, {"sliding_window_shapes": (1, 2, 2)}),
                            (model, {"sliding_window_shapes": (1, 3, 2), "strides": (1, 1, 2), "baselines": 0.3}),
                            (lambda z: model(z).sum(), {"sliding_window_shapes": (1, 4, 4), "strides": 2}),
                            (lambda z: model(z)[:, 4], {"sliding_window_shapes": (1, 2, 2)})]:
        ref = cattr.Occlusion(forward).attribute(x, **kwargs)
        assert ref.shape[0] in (1, x.shape[0], x.shape[0] * 10)
        close(fa.Occlusion(forward).attribute(x, **kwargs), ref, x)
    net = TwoInputs().double().eval()
    pair = (x, torch.randn(x.shape[0], 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    scale = torch.full((x.shape[0], 1), 0.5, dtype=torch.float64)
    kwargs = {"sliding_window_shapes": ((1, 2, 2), (2,)), "additional_forward_args": (scale,)}
    close(fa.Occlusion(net).attribute(pair, **kwargs), cattr.Occlusion(net).attribute(pair, **kwargs), pair)
    counts = lambda z: (model(z).sum() * 100).long()  # noqa: E731 - an integer for the whole batch
    mask = torch.arange(64).reshape(1, 1, 8, 8) // 16
    ours, ref = fa.FeatureAblation(counts).attribute(x, feature_mask=mask), \
        cattr.FeatureAblation(counts).attribute(x, feature_mask=mask)
    assert ours.dtype == ref.dtype == torch.int64 and torch.equal(ours, ref) and ref.abs().sum() > 0


def test_tuple_target_on_a_model_with_a_3d_output():
    torch.manual_seed(5)
    lin = nn.Linear(16, 6).double()

    def grid_model(z):
        return lin(z).reshape(z.shape[0], 2, 3)

    _, x, _ = case("residual")
    ref = cattr.FeatureAblation(grid_model).attribute(x, target=(1, 2), baselines=0.1)
    close(fa.FeatureAblation(grid_model).attribute(x, target=(1, 2), baselines=0.1), ref, x)
    targets = [(0, 1), (1, 0), (1, 2), (0, 0), (0, 2), (1, 1)]
    ref = cattr.Occlusion(grid_model).attribute(x, sliding_window_shapes=(3,), target=targets)
    close(fa.Occlusion(grid_model).attribute(x, sliding_window_shapes=(3,), target=targets), ref, x)


def test_a_tuple_of_one_input_gives_a_tuple():
    model, x, y = case("cnn")
    ref = cattr.Occlusion(model).attribute((x,), sliding_window_shapes=((1, 3, 3),), strides=(2,), target=y,
                                           baselines=(0.2,))
    ours = fa.Occlusion(model).attribute((x,), sliding_window_shapes=((1, 3, 3),), strides=(2,), target=y,
                                         baselines=(0.2,))
    close(ours, ref, (x,))
    mask = (segments("patches", x),)
    ref = cattr.FeatureAblation(model).attribute((x,), target=y, feature_mask=mask)
    close(fa.FeatureAblation(model).attribute((x,), target=y, feature_mask=mask), ref, (x,))


def two_inputs():
    torch.manual_seed(6)
    model = TwoInputs().double().eval()
    image = digits()[0]
    vector = torch.randn(6, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    scale = torch.rand(6, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64) + 0.5
    return model, (image, vector), scale, torch.tensor([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("per_eval", [1, 3])
def test_several_inputs_and_additional_forward_args(per_eval):
    model, xs, scale, y = two_inputs()
    kwargs = dict(sliding_window_shapes=((1, 2, 3), (2,)), strides=((1, 1, 2), 1), target=y,
                  baselines=(0.1, torch.full((1, 5), -0.2, dtype=torch.float64)),
                  additional_forward_args=(scale,), perturbations_per_eval=per_eval)
    close(fa.Occlusion(model).attribute(xs, **kwargs), cattr.Occlusion(model).attribute(xs, **kwargs), xs)
    # Segment ids 0 and 1 appear in both tensors: each is ablated in both at once.
    masks = (segments("patches", xs[0]) % 6, torch.tensor([[0, 1, 6, 6, 7]]))
    for mask in (masks, None):
        kwargs = dict(target=y, feature_mask=mask, additional_forward_args=scale,
                      perturbations_per_eval=per_eval)
        ref = cattr.FeatureAblation(model).attribute(xs, **kwargs)
        close(fa.FeatureAblation(model).attribute(xs, **kwargs), ref, xs)


def test_captum_flags_and_inputs_left_untouched():
    model, x, y = case("cnn")
    copy = x.clone()
    for cls in (fa.Occlusion, fa.FeatureAblation):
        method = cls(model)
        assert method.multiplies_by_inputs and not method.has_convergence_delta()
        assert method.forward_func is model
    fa.Occlusion(model).attribute(x, sliding_window_shapes=(1, 2, 2), target=y)
    assert torch.equal(x, copy) and not model.training


def test_bad_arguments():
    model, x, y = case("cnn")
    with pytest.raises(TypeError, match="inputs must be a tensor or a tuple of tensors"):
        fa.Occlusion(model).attribute(x.tolist(), sliding_window_shapes=(1, 2, 2))
    with pytest.raises(ValueError, match="perturbations_per_eval must be an int >= 1"):
        fa.FeatureAblation(model).attribute(x, target=y, perturbations_per_eval=0)
    with pytest.raises(ValueError, match=r"sliding_window_shapes\[1\] = 9"):
        fa.Occlusion(model).attribute(x, sliding_window_shapes=(1, 9, 2), target=y)
    with pytest.raises(ValueError, match=r"strides\[2\] = 3 is larger than the window"):
        fa.Occlusion(model).attribute(x, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 3), target=y)
    with pytest.raises(ValueError, match="one input tensor takes one feature_mask"):
        fa.FeatureAblation(model).attribute(x, target=y, feature_mask=(segments("patches", x),) * 2)
    two, xs, scale, y2 = two_inputs()
    with pytest.raises(ValueError, match="feature_mask must be a tuple with one entry per input tensor"):
        fa.FeatureAblation(two).attribute(xs, target=y2, feature_mask=segments("patches", xs[0]),
                                          additional_forward_args=scale)
    with pytest.raises(ValueError, match="sliding_window_shapes must be a tuple with one entry per input"):
        fa.Occlusion(two).attribute(xs, sliding_window_shapes=(1, 2, 2), target=y2,
                                    additional_forward_args=scale)
    with pytest.raises(ValueError, match="batch size"):
        fa.FeatureAblation(two).attribute((xs[0], xs[1][:3]), target=y2, additional_forward_args=scale)
    wrong = (segments("patches", xs[0]), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"feature_mask\[1\]"):
        fa.FeatureAblation(two).attribute(xs, target=y2, feature_mask=wrong, additional_forward_args=scale)


@pytest.mark.parametrize("module", ["fastattr.integrations._captum_perturbation", "fastattr.integrations.captum"])
def test_imports_on_its_own(module):
    """Either Captum drop-in module imports first in a fresh interpreter (no import cycle)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module} as m; print(m.Occlusion.__name__)"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Occlusion"


class Shifted(nn.Module):
    """An MLP on 16 features whose call takes a shared logit shift ``[C]``, a shared temperature ``[1]``
    and a dict holding a per-example gate ``[B, 16]``: Captum passes them as they are at its default of
    one perturbation per pass, and so must fastattr while it batches many."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5))

    def forward(self, z, shift, temperature, extra):
        return self.net(z * extra["gate"]) / temperature.sum() + shift


def shifted_case():
    torch.manual_seed(11)
    model = Shifted().double().eval()
    _, x, y = case("residual")
    gen = torch.Generator().manual_seed(12)
    args = (torch.randn(5, generator=gen, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64),
            {"gate": torch.rand(6, 16, generator=gen, dtype=torch.float64) + 0.5})
    return model, x, y, args


def test_shared_and_nested_additional_forward_args():
    model, x, y, args = shifted_case()
    copies = [a.clone() for a in args[:2]] + [args[2]["gate"].clone()]
    ref = cattr.Occlusion(model).attribute(x, sliding_window_shapes=(3,), target=y, additional_forward_args=args)
    close(fa.Occlusion(model).attribute(x, sliding_window_shapes=(3,), target=y, additional_forward_args=args),
          ref, x)
    mask = torch.arange(16).div(4, rounding_mode="floor")[None]
    ref = cattr.FeatureAblation(model).attribute(x, target=y, feature_mask=mask, additional_forward_args=args)
    close(fa.FeatureAblation(model).attribute(x, target=y, feature_mask=mask, additional_forward_args=args),
          ref, x)
    assert all(torch.equal(a, c) for a, c in zip(args[:2] + (args[2]["gate"],), copies))


def test_shared_additional_forward_args_in_gradient_drop_ins():
    """Captum's IG and NoiseTunnel repeat every tensor argument, so a shared shift breaks them; fastattr
    passes it as it is, tiles the per-example gate, and gives what the model with the arguments bound
    in gives, one example at a time."""
    from fastattr.integrations import captum as fc

    model, x, y, args = shifted_case()

    def one_by_one(method, **kwargs):
        rows = []
        for b in range(x.shape[0]):
            one = (args[0], args[1], {"gate": args[2]["gate"][b:b + 1]})
            bound = lambda z, one=one: model(z, *one)  # noqa: E731
            rows.append(method(bound).attribute(x[b:b + 1], target=y[b:b + 1], **kwargs))
        return torch.cat(rows)

    ours = fc.IntegratedGradients(model).attribute(x, target=y, additional_forward_args=args, n_steps=16)
    assert rel_err(ours, one_by_one(fc.IntegratedGradients, n_steps=16)) <= TOL
    ref = cattr.Saliency(model).attribute(x, target=y, additional_forward_args=args)
    close(fc.Saliency(model).attribute(x, target=y, additional_forward_args=args), ref, x)
    ours = fc.NoiseTunnel(fc.Saliency(model)).attribute(x, additional_forward_args=args, nt_type="smoothgrad",
                                                        nt_samples=4, stdevs=0.0, target=y)
    assert rel_err(ours, ref) <= TOL


class Tokens(nn.Module):
    """Token ids ``[B, T]`` → embedding → mean over tokens → 3 logits."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(20, 6), nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(torch.tanh(self.emb(ids)).mean(1))


def test_integer_token_ids():
    torch.manual_seed(13)
    model = Tokens().eval()
    ids = torch.randint(1, 20, (4, 7), generator=torch.Generator().manual_seed(14))
    y, copy = torch.tensor([0, 1, 2, 0]), ids.clone()
    ref = cattr.FeatureAblation(model).attribute(ids, baselines=0, target=y)
    ours = fa.FeatureAblation(model).attribute(ids, baselines=0, target=y)
    assert ours.dtype == torch.float32 and ours.shape == ids.shape and ref.abs().sum() > 0
    assert rel_err(ours, ref.float()) <= TOL
    groups = torch.tensor([[0, 0, 1, 1, 2, 2, 2]])
    ref = cattr.FeatureAblation(model).attribute(ids, baselines=0, target=y, feature_mask=groups)
    assert rel_err(fa.FeatureAblation(model).attribute(ids, baselines=0, target=y, feature_mask=groups),
                   ref.float()) <= TOL
    ref = cattr.Occlusion(model).attribute(ids, sliding_window_shapes=(3,), baselines=0, target=y)
    ours = fa.Occlusion(model).attribute(ids, sliding_window_shapes=(3,), baselines=0, target=y)
    assert ours.dtype == torch.float32 and rel_err(ours, ref) <= TOL
    assert torch.equal(ids, copy)
    with pytest.raises(ValueError, match="whole number"):
        fa.FeatureAblation(model).attribute(ids, baselines=0.5, target=y)


def test_negative_target_counts_from_the_end():
    model, x, _ = case("cnn")
    ref = cattr.FeatureAblation(model).attribute(x, target=-1, feature_mask=segments("patches", x))
    close(fa.FeatureAblation(model).attribute(x, target=-1, feature_mask=segments("patches", x)), ref, x)


def test_empty_batch_and_missing_window():
    model, x, y = case("cnn")
    with pytest.raises(ValueError, match="non-empty batch axis"):
        fa.FeatureAblation(model).attribute(x[:0])
    with pytest.raises(TypeError, match="sliding_window_shapes must be a tuple"):
        fa.Occlusion(model).attribute(x, sliding_window_shapes=None, target=y)


class Coupled(nn.Module):
    """An image through a convolution, BatchNorm and ReLU, and a vector, into dropout and a linear layer: in
    training mode its outputs depend on which inputs share a forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv, self.norm = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.drop, self.fc = nn.Dropout(0.2), nn.Linear(4 * 64 + 5, 4)

    def forward(self, image, vector):
        return self.fc(self.drop(torch.cat([self.norm(self.conv(image)).relu().flatten(1), vector], 1)))


@pytest.mark.parametrize("per_eval", [1, 3, 7])
def test_a_model_in_training_mode_gets_captums_forwards(per_eval):
    """Batch statistics and dropout make the values depend on which perturbations share a forward: for such a
    model the drop-ins run Captum's forwards (``perturbations_per_eval`` perturbations each, Captum's order of
    windows and of feature ids across the inputs) and give Captum's values, draw for draw, with the model's
    buffers as they were; without a target, Captum's per-output attributions from the same forwards."""
    model = Coupled().double().train()
    x = (digits()[0][:5], torch.randn(5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    interleaved = (torch.arange(64).reshape(1, 1, 8, 8) // 9 * 2, torch.tensor([[1, 3, 5, 5, 0]]))
    runs = [("Occlusion", {"sliding_window_shapes": ((1, 2, 2), (2,)), "strides": ((1, 2, 1), 1), "target": 1}),
            ("FeatureAblation", {"target": 1}), ("FeatureAblation", {"feature_mask": interleaved, "target": 1}),
            ("Occlusion", {"sliding_window_shapes": ((1, 4, 4), (5,)), "strides": ((1, 2, 2), 1)}),  # per output
            ("FeatureAblation", {"feature_mask": interleaved})]
    for name, kwargs in runs:
        torch.manual_seed(3)
        ours = getattr(fa, name)(model).attribute(x, perturbations_per_eval=per_eval, **kwargs)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        torch.manual_seed(3)
        ref = getattr(cattr, name)(model).attribute(x, perturbations_per_eval=per_eval, **kwargs)
        model.load_state_dict(state)  # Captum's forwards update the running statistics
        close(ours, ref, x)


def test_the_forwards_fastattr_adds_take_no_dropout_draws():
    """The forwards the drop-ins add to Captum's own (the output probe without a target, the dtype probe of
    integer inputs, the target flattening of a tuple target) leave the global RNG as it was, so on a model with
    dropout in training mode the values are Captum's, draw for draw."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Dropout(0.3), nn.Linear(5, 6)).double().train()
    embed = nn.Embedding(10, 7).double()
    v = torch.randn(4, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ids = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(2))
    first = lambda z: net(z)[:, 0]  # noqa: E731 - one output per example, no target
    pooled = lambda t: net(embed(t).mean(1))  # noqa: E731 - token ids in
    grid = lambda z: net(z).reshape(-1, 2, 3)  # noqa: E731 - a tuple target indexes [B, 2, 3]
    runs = [("Occlusion", first, v, {"sliding_window_shapes": (2,)}), ("FeatureAblation", first, v, {}),
            ("FeatureAblation", pooled, ids, {"target": 1}), ("Occlusion", pooled, ids, {"sliding_window_shapes": (2,),
                                                                                         "target": 1}),
            ("FeatureAblation", grid, v, {"target": (1, 2)})]
    for name, forward, x, kwargs in runs:
        out = []
        for lib in (fa, cattr):
            torch.manual_seed(5)
            out.append(getattr(lib, name)(forward).attribute(x, **kwargs))
        assert out[1].abs().sum() > 0
        assert rel_err(out[0], out[1]) < 1e-6, (name, kwargs, rel_err(out[0], out[1]))
