"""KernelSHAP and LIME (SPEC §10): with every coalition, ``kernel_shap`` equals the exact Shapley values
computed by brute force from the model's value table (M = 6, 9, 12 patches of real digits), efficiency
holds to 1e-5 whatever the coalitions; LIME's batched surrogates equal scikit-learn's per-example
fits on the same coalitions and weights; the Captum drop-ins equal Captum's ``KernelShap`` / ``Lime``
when both get the same coalitions; bad input is named."""
import math

import numpy as np
import pytest
import torch

import fastattr
from fastattr.core import CountingModel
from tests.conftest import rel_err
from tests.integrations.models import cnn, digits

sklearn = pytest.importorskip("sklearn.linear_model")


def segments(m: int) -> torch.Tensor:
    """``m`` vertical-then-horizontal strips of the 8×8 digits, ids 0..m-1, shape [1, 1, 8, 8]."""
    cells = {6: (2, 3), 9: (3, 3), 12: (3, 4), 16: (4, 4), 4: (2, 2)}[m]
    rows = torch.arange(8) * cells[0] // 8
    cols = torch.arange(8) * cells[1] // 8
    return (rows[:, None] * cells[1] + cols[None, :]).reshape(1, 1, 8, 8)


def value_table(model, x, target, mask, m):
    """``v [B, 2^M]``: the target logit with feature set S (bit j of the index: feature j kept) from x,
    the rest from the zero baseline."""
    codes = torch.arange(2 ** m)
    keep = ((codes[:, None] >> torch.arange(m)) & 1).bool()  # [2^M, M]
    pixel_keep = keep[:, mask.reshape(-1)].reshape(2 ** m, 1, 8, 8)
    with torch.no_grad():
        out = torch.stack([model(torch.where(pixel_keep, x[b], torch.zeros(()))) for b in range(x.shape[0])])
    return out[torch.arange(x.shape[0]), :, target]


def brute_force_shapley(v: torch.Tensor, m: int) -> torch.Tensor:
    phi = torch.zeros(v.shape[0], m, dtype=torch.float64)
    for i in range(m):
        for code in range(2 ** m):
            if code >> i & 1:
                continue
            size = bin(code).count("1")
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            phi[:, i] += weight * (v[:, code | 1 << i] - v[:, code])
    return phi


@pytest.mark.parametrize("m", [6, 9, 12])
def test_all_coalitions_give_the_exact_shapley_values(m):
    model, (x, _) = cnn(), digits(3)
    target = torch.tensor([2, 5, 7])
    mask = segments(m)
    exact = brute_force_shapley(value_table(model, x, target, mask, m), m)
    got = fastattr.kernel_shap(model, x, target, feature_mask=mask, return_input_shape=False)
    assert rel_err(got, exact) < 1e-10
    as_map = fastattr.kernel_shap(model, x, target, feature_mask=mask)
    assert as_map.shape == x.shape
    torch.testing.assert_close(as_map, got.gather(1, mask.reshape(1, -1).expand(3, -1)).reshape(x.shape))


def test_sampled_coalitions_keep_efficiency_and_approach_the_shapley_values():
    model, (x, _) = cnn(), digits(3)
    target, mask, m = torch.tensor([0, 1, 2]), segments(16), 16
    v = value_table(model, x, target, mask, m)
    exact = brute_force_shapley(v, m)
    for n, paired in [(40, True), (41, False), (4000, True)]:
        got = fastattr.kernel_shap(model, x, target, feature_mask=mask, n_samples=n, paired=paired,
                                   return_input_shape=False, generator=7)
        torch.testing.assert_close(got.sum(1), v[:, -1] - v[:, 0], rtol=1e-5, atol=1e-5)
    assert rel_err(got, exact) < 0.05  # 4000 paired draws of the 65 534 coalitions
    again = fastattr.kernel_shap(model, x, target, feature_mask=mask, n_samples=4000, return_input_shape=False,
                                 generator=7)
    assert torch.equal(got, again)


def _cosine_weights(x, copies, width):
    flat, pert = x.reshape(1, -1), copies.reshape(copies.shape[0], -1)
    d = 1 - torch.nn.functional.cosine_similarity(flat, pert, dim=1)
    return torch.exp(-d ** 2 / (2 * width ** 2))


@pytest.mark.parametrize("surrogate", ["lasso", "ridge", "ols"])
def test_lime_surrogates_equal_scikit_learn_per_example(surrogate):
    model, (x, _) = cnn(), digits(4, offset=10)
    target, mask, m = torch.tensor([0, 3, 1, 4]), segments(9), 9
    z = torch.rand(4, 120, m, generator=torch.Generator().manual_seed(1)) < 0.5
    alpha = {"lasso": 1e-4, "ridge": 0.3, "ols": 0.0}[surrogate]
    got = fastattr.lime(model, x, target, feature_mask=mask, coalitions=z, surrogate=surrogate, alpha=alpha,
                        kernel_width=0.5, return_input_shape=False)
    for b in range(4):
        keep = z[b][:, mask.reshape(-1)].reshape(-1, 1, 8, 8)
        copies = torch.where(keep, x[b], torch.zeros(()))
        with torch.no_grad():
            y = model(copies)[:, target[b]].numpy()
        w = _cosine_weights(x[b], copies, 0.5).numpy()
        fit = {"lasso": lambda: sklearn.Lasso(alpha=alpha, tol=1e-12, max_iter=100_000),
               "ridge": lambda: sklearn.Ridge(alpha=alpha), "ols": sklearn.LinearRegression}[surrogate]()
        ref = fit.fit(z[b].double().numpy(), y, sample_weight=w).coef_
        assert (ref != 0).sum() >= 3  # a fit with coefficients to compare, not an all-zero Lasso
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-6, atol=1e-9)


def test_lime_draws_are_seeded_and_per_example():
    model, (x, _) = cnn(), digits(3)
    kw = dict(feature_mask=segments(4), n_samples=64, return_input_shape=False, alpha=1e-5)
    a = fastattr.lime(model, x, 0, generator=3, **kw)
    assert torch.equal(a, fastattr.lime(model, x, 0, generator=3, **kw))
    assert not torch.equal(a, fastattr.lime(model, x, 0, generator=4, **kw))
    euclid = fastattr.lime(model, x, 0, generator=3, distance="euclidean", **kw)
    assert euclid.shape == (3, 4) and torch.isfinite(euclid).all()


def _replay(z):
    rows = iter(z.long())

    def perturb(*_, **__):
        return next(rows)[None]
    return perturb


def test_drop_in_lime_equals_captum_on_the_same_coalitions():
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import Lime
    model, (x, _) = cnn(), digits(1, offset=3)
    mask, m = segments(6), 6
    z = torch.rand(60, m, generator=torch.Generator().manual_seed(5)) < 0.5
    theirs = Lime(model, SkLearnLasso(alpha=1e-4), perturb_func=_replay(z)).attribute(
        x, target=3, feature_mask=mask, n_samples=60, return_input_shape=False)
    ours = fastattr.lime(model, x, 3, feature_mask=mask, coalitions=z, kernel_width=1.0, alpha=1e-4,
                         return_input_shape=False)
    assert (theirs != 0).sum() >= 3
    assert rel_err(ours, theirs) < 1e-4  # Captum fits in float32


def test_drop_in_kernel_shap_equals_captum_on_the_same_coalitions():
    from captum.attr import KernelShap
    model, (x, _) = cnn(), digits(1, offset=5)
    mask, m = segments(9), 9
    z = torch.rand(80, m, generator=torch.Generator().manual_seed(2)) < 0.5
    z = z[(z.sum(1) > 0) & (z.sum(1) < m)]
    explainer = KernelShap(model)

    def replay(*_, **__):
        yield torch.ones(1, m, dtype=torch.long)
        yield torch.zeros(1, m, dtype=torch.long)
        yield from (row[None].long() for row in z)
    explainer.perturb_func = replay
    theirs = explainer.attribute(x, target=5, feature_mask=mask, n_samples=z.shape[0] + 2, return_input_shape=False)
    assert (theirs != 0).all()
    ours = fastattr.kernel_shap(model, x, 5, feature_mask=mask, coalitions=z, return_input_shape=False)
    assert rel_err(ours, theirs) < 1e-4  # Captum weights the two constraints by 1e6 and fits in float32


def test_drop_ins_take_captums_arguments_and_shapes():
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr._core.lime import get_exp_kernel_similarity_function
    from fastattr.integrations.captum import KernelShap, Lime
    model, (x, _) = cnn(), digits(2)
    mask = segments(4)
    for explainer in (KernelShap(model), Lime(model),
                      Lime(model, SkLearnRidge(alpha=0.5), get_exp_kernel_similarity_function("euclidean", 2.0))):
        torch.manual_seed(0)
        a = explainer.attribute(x, target=1, feature_mask=mask, n_samples=30)
        torch.manual_seed(0)
        assert torch.equal(a, explainer.attribute(x, target=1, feature_mask=mask, n_samples=30))
        assert a.shape == x.shape and a.dtype == x.dtype
        flat = explainer.attribute((x,), target=[1, 2], feature_mask=(mask,), n_samples=30, return_input_shape=False)
        assert flat.shape == (2, 4)
    with pytest.raises(NotImplementedError, match="interpretable_model"):
        Lime(model, interpretable_model=object())
    with pytest.raises(NotImplementedError, match="perturb_func"):
        Lime(model, perturb_func=lambda *a, **k: None)


def test_drop_in_takes_several_inputs_sharing_feature_ids():
    from fastattr.integrations.captum import KernelShap
    model, (x, _) = cnn(), digits(2)
    halves = (x[:, :, :4], x[:, :, 4:])

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, top, bottom):
            return self.net(torch.cat([top, bottom], 2))

    mask = segments(4)
    torch.manual_seed(1)
    ours = KernelShap(Split()).attribute(halves, target=0, feature_mask=(mask[..., :4, :], mask[..., 4:, :]),
                                          n_samples=200)
    joined = fastattr.kernel_shap(model, x, 0, feature_mask=mask)  # M = 4 < 13: exact
    torch.manual_seed(1)
    exact_split = KernelShap(Split()).attribute(halves, target=0, feature_mask=(mask[..., :4, :],
                                                                                mask[..., 4:, :]), n_samples=16)
    assert isinstance(ours, tuple) and len(ours) == 2
    torch.testing.assert_close(torch.cat(exact_split, 2), joined)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_bad_input_is_named(method):
    model, (x, _) = cnn(), digits(2)
    fn = getattr(fastattr, method)
    gaps = segments(4) * 2
    with pytest.raises(ValueError, match="feature_mask must hold the ids 0..M-1 without gaps"):
        fn(model, x, 0, feature_mask=gaps)
    with pytest.raises(ValueError, match="feature_mask"):
        fn(model, x, 0, feature_mask=torch.zeros(1, 1, 8, 8, dtype=torch.long))  # M = 1
    with pytest.raises(ValueError, match="feature_mask"):
        fn(model, x, 0, feature_mask=torch.zeros(1, 1, 4, 4, dtype=torch.long))  # does not broadcast
    with pytest.raises(TypeError, match="coalitions"):
        fn(model, x, 0, feature_mask=segments(4), coalitions=torch.ones(5, 4))
    with pytest.raises(ValueError, match="coalitions"):
        fn(model, x, 0, feature_mask=segments(4), coalitions=torch.ones(5, 3, dtype=torch.bool))
    if method == "kernel_shap":
        with pytest.raises(ValueError, match="n_samples must be at least M \\+ 1 = 17"):
            fn(model, x, 0, feature_mask=segments(16), n_samples=16)
        with pytest.raises(TypeError, match="paired"):
            fn(model, x, 0, feature_mask=segments(16), paired="yes")
    else:
        with pytest.raises(ValueError, match="kernel_width"):
            fn(model, x, 0, feature_mask=segments(4), kernel_width=-0.5)
        with pytest.raises(ValueError, match="kernel_width"):
            fn(model, x, 0, feature_mask=segments(4), kernel_width=0)
        with pytest.raises(ValueError, match="surrogate"):
            fn(model, x, 0, feature_mask=segments(4), surrogate="tree")
        with pytest.raises(ValueError, match="n_samples"):
            fn(model, x, 0, feature_mask=segments(4), n_samples=1)


def test_every_coalition_is_run_through_the_engine_in_chunks():
    model, (x, _) = cnn(), digits(3)
    mask = segments(6)
    whole = fastattr.kernel_shap(model, x, 1, feature_mask=mask)
    for chunk in (1, 7, 62):
        torch.testing.assert_close(fastattr.kernel_shap(model, x, 1, feature_mask=mask, max_batch=chunk), whole,
                                   rtol=1e-12, atol=1e-12)
    counted = CountingModel(model)
    fastattr.kernel_shap(counted, x, 1, feature_mask=mask, max_batch=7)
    assert counted.inputs == 3 * (2 ** 6 - 2) + 2 * 3  # every coalition once, plus f(x) and f(x')
