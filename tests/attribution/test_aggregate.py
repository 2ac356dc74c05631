"""fastattr.aggregate (AGG, SPEC §5) on the digits CNN and real digits: G against its definition
draw by draw, the weights optimal on the simplex, Theorem 4.2 (the ambiguity decomposition) on real
attributions, mean / var, chunk independence, untouched model and inputs, bad arguments."""
import pytest
import torch

import fastattr
from fastattr.attribution.aggregate import abs_max, aggregation_matrices
from fastattr.core import Blur
from tests.integrations.models import cnn, digits

METHODS = {"saliency": "saliency", "ixg": "input_x_gradient", "ig": "integrated_gradients"}


def _setup(n=4):
    x, _ = digits(n, offset=100)
    model = cnn()
    return model, x, model(x).argmax(1)


def _gammas(model, x, t, names, agg, *, n_samples, seed, noise_first=True, radius=0.1, fraction=0.2):
    """The Γ_j of both objectives, one draw at a time, as the paper writes them: robust
    ``Φ(x) − Φ(x + ε_j)`` [m, B, d, k] (drawn first when ``noise_first``, as "opt" does); faith
    ``I_jᵀΦ − Δf_j`` [m, B, k]."""
    gen = torch.Generator().manual_seed(seed)
    phi = agg.maps.reshape(x.shape[0], len(names), -1).transpose(1, 2)  # [B, d, k]
    robust = []
    for _ in range(n_samples if noise_first else 0):
        z = x + (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1) * radius
        e = torch.stack([abs_max(fastattr.attribution.METHODS[m](model, z, t)).reshape(x.shape[0], -1)
                         for m in names.values()], -1)
        robust.append(phi - e)
    feats = phi.shape[1]
    size = round(fraction * feats)
    base = Blur()(x)
    faith, proj = [], []
    keys = [torch.rand(1, n_samples, feats, generator=gen) for _ in range(x.shape[0])]
    f_x = model(x).gather(1, t[:, None])[:, 0]
    for j in range(n_samples):
        rows, projections = [], []
        for b in range(x.shape[0]):
            chosen = torch.zeros(feats, dtype=torch.bool)
            chosen[torch.argsort(keys[b][0, j], stable=True)[:size]] = True
            x_tilde = torch.where(chosen.view(x[b].shape), base[b], x[b])
            delta = f_x[b] - model(x_tilde[None])[0, t[b]]
            i_phi = ((x[b] - x_tilde).reshape(-1)[:, None] * phi[b]).sum(0)
            rows.append(i_phi - delta)
            projections.append(i_phi)
        faith.append(torch.stack(rows))
        proj.append(torch.stack(projections))
    return (torch.stack(robust) if robust else None), torch.stack(faith), torch.stack(proj)


def test_matrices_match_the_definition_and_theorem_4_2():
    model, x, t = _setup()
    agg_r = fastattr.aggregate(model, x, t, methods=METHODS, objective="robust", n_samples=6, generator=5)
    agg_f = fastattr.aggregate(model, x, t, methods=METHODS, objective="faith", n_samples=6, generator=5)
    robust, _, _ = _gammas(model, x, t, METHODS, agg_r, n_samples=6, seed=5)
    torch.testing.assert_close(agg_r.G, torch.einsum("mbdi,mbdl->bil", robust, robust) / 6)
    _, faith, proj = _gammas(model, x, t, METHODS, agg_f, n_samples=6, seed=5, noise_first=False)
    torch.testing.assert_close(agg_f.G, torch.einsum("mbi,mbl->bil", faith, faith) / 6)
    # Theorem 4.2 for infidelity (γ₁ = I_jᵀ, γ₂ = Δf_j) on real maps and AGG_faith's weights:
    # Q(φ_ω) = Σ ω_i Q(φ^i) − E Σ ω_i (I_jᵀ(φ^i − φ_ω))²
    w = agg_f.weights.double()
    lhs = torch.einsum("mbk,bk->mb", faith, w).square().mean(0)
    q_i = faith.square().mean(0)  # [B, k]
    spread = (proj - torch.einsum("mbk,bk->mb", proj, w)[..., None]).square().mean(0)  # [B, k]
    torch.testing.assert_close(lhs, (w * q_i).sum(1) - (w * spread).sum(1))
    torch.testing.assert_close(lhs, torch.einsum("bk,bkl,bl->b", w, agg_f.G, w))
    assert torch.all((w * spread).sum(1) >= 0)  # the ambiguity term: never worse than the weighted mean


@pytest.mark.parametrize("objective", ["robust", "faith", "opt"])
def test_weights_minimise_the_objective_on_the_simplex(objective):
    model, x, t = _setup()
    agg = fastattr.aggregate(model, x, t, methods=METHODS, objective=objective, n_samples=8)
    w, g = agg.weights.double(), agg.G
    assert torch.all(w >= -1e-9) and torch.allclose(w.sum(1), torch.ones(4, dtype=torch.float64))
    best = torch.einsum("bk,bkl,bl->b", w, g, w)
    gen = torch.Generator().manual_seed(0)
    flat = -torch.log(torch.rand(200, 3, generator=gen, dtype=torch.float64))  # uniform on the simplex
    others = torch.cat([torch.eye(3, dtype=torch.float64), torch.full((1, 3), 1 / 3, dtype=torch.float64),
                        flat / flat.sum(1, keepdim=True)])
    values = torch.einsum("nk,bkl,nl->bn", others, g, others)
    assert torch.all(best[:, None] <= values + 1e-9 * values.abs().clamp_min(1))
    expected = torch.einsum("bk,bkd->bd", agg.weights, agg.maps.reshape(4, 3, -1)).reshape(agg.attribution.shape)
    torch.testing.assert_close(agg.attribution, expected)
    assert agg.names == list(METHODS) and agg.objective == objective


def test_mean_and_var_and_precomputed_maps():
    model, x, t = _setup()
    maps = {n: fastattr.attribution.METHODS[m](model, x, t) for n, m in METHODS.items()}
    mean = fastattr.aggregate(model, x, t, methods=maps, objective="mean")
    stacked = torch.stack([abs_max(m) for m in maps.values()], 1)
    torch.testing.assert_close(mean.attribution, stacked.mean(1))
    torch.testing.assert_close(mean.weights, torch.full((4, 3), 1 / 3, dtype=mean.weights.dtype))
    var = fastattr.aggregate(model, x, t, methods=maps, objective="var")
    torch.testing.assert_close(var.attribution, stacked.mean(1) / (stacked.std(1, unbiased=False) + 1e-8))
    faith = fastattr.aggregate(model, x, t, methods=maps, objective="faith", n_samples=5)
    by_name = fastattr.aggregate(model, x, t, methods=METHODS, objective="faith", n_samples=5)
    torch.testing.assert_close(faith.G, by_name.G)


def test_chunks_seed_and_untouched():
    model, x, t = _setup()
    saved_x, saved = x.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    a = fastattr.aggregate(model, x, t, methods=METHODS, objective="opt", n_samples=5, generator=2)
    b = fastattr.aggregate(model, x, t, methods=METHODS, objective="opt", n_samples=5, generator=2, max_batch=3)
    torch.testing.assert_close(a.G, b.G)
    torch.testing.assert_close(a.weights, b.weights, atol=1e-7, rtol=1e-6)
    c = fastattr.aggregate(model, x, t, methods=METHODS, objective="opt", n_samples=5, generator=3)
    assert not torch.allclose(a.G, c.G)
    assert torch.equal(x, saved_x)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_the_perturbed_inputs_are_explained_in_one_call_unless_max_batch_says_otherwise():
    model, x, t = _setup()
    calls = {}

    def counted(name):
        def fn(m, z, tz):
            calls.setdefault(name, []).append(z.shape[0])
            return fastattr.attribution.METHODS[name](m, z, tz)
        return fn

    methods = {name: counted(name) for name in ("saliency", "input_x_gradient")}
    fastattr.aggregate(model, x, t, methods=methods, objective="robust", n_samples=5)
    assert calls == {name: [24] for name in methods}  # the clean inputs ahead of all m·B perturbed ones
    calls.clear()
    fastattr.aggregate(model, x, t, methods=methods, objective="robust", n_samples=5, max_batch=8)
    assert calls == {name: [8, 8, 8] for name in methods}  # the inputs and one draw, then two draws a call
    calls.clear()
    fastattr.aggregate(model, x, t, methods=methods, objective="robust", n_samples=5, max_batch=5)
    assert calls == {name: [4, 4, 4, 4, 4, 4] for name in methods}  # no room beside the inputs: a call of theirs


def test_bad_arguments():
    model, x, t = _setup(2)
    with pytest.raises(ValueError, match="at least two"):
        fastattr.aggregate(model, x, t, methods={"s": "saliency"})
    with pytest.raises(ValueError, match="objective must be"):
        fastattr.aggregate(model, x, t, methods=METHODS, objective="best")
    with pytest.raises(ValueError, match="n_samples"):
        fastattr.aggregate(model, x, t, methods=METHODS, n_samples=1)
    with pytest.raises(ValueError, match="precomputed"):
        fastattr.aggregate(model, x, t, methods={"a": torch.rand(2, 1, 8, 8), "b": "saliency"}, objective="robust")
    phi = torch.stack([fastattr.saliency(model, x, t), fastattr.input_x_gradient(model, x, t)], 1)
    for objective in ("robust", "opt"):  # the public G builder refuses them too, not only aggregate
        with pytest.raises(ValueError, match="'b' is a precomputed map"):
            aggregation_matrices(model, x, t, model(x).gather(1, t[:, None]).squeeze(1),
                                 {"a": lambda m, z, tz: fastattr.saliency(m, z, tz), "b": phi[:, 1]}, phi, abs_max,
                                 objective=objective, n_samples=3, radius=0.1, fraction=0.2, baseline="blur",
                                 lam=(0.5, 0.5), generator=torch.Generator().manual_seed(1), chunk=x.shape[0])
    with pytest.raises(ValueError, match="all maps of one shape"):
        fastattr.aggregate(model, x, t, methods={"a": torch.rand(2, 1, 8, 8, dtype=torch.float64),
                                                 "b": torch.rand(2, 8, 8, dtype=torch.float64)}, objective="mean")
    nan = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fastattr.aggregate(model, x, t, methods={"a": nan, "b": "saliency"}, objective="mean")
    with pytest.raises(ValueError, match="not a method"):
        fastattr.aggregate(model, x, t, methods={"a": "nope", "b": "saliency"})
    with pytest.raises(ValueError, match="lam must be"):
        fastattr.aggregate(model, x, t, methods=METHODS, lam=(0, 0))
