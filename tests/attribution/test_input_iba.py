"""input_iba (thesis ch. 6 §3; SPEC §9): Proposition 3's closed-form KL against a Monte-Carlo estimate;
the batched pipeline — IBA at a deep layer, the per-example WGAN, the input bottleneck — equal to the
thesis's loop written here one image at a time on the same random draws; seeded; its maps beat random
ones on insertion; bad input named."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import fastattr
from fastattr.reference.bottleneck import gaussian_kernel
from fastattr.zoo import load_digits, load_digits_cnn

from .test_iba import _frozen, _paper_loop

input_iba_module = importlib.import_module("fastattr.attribution.input_iba")


def _digits(n_train=400, n_test=3):
    model = load_digits_cnn().double().eval()
    x_train, _ = load_digits("train", n_train)
    x, y = load_digits("test", 450)
    return model, x_train.double(), x[-n_test:].double(), y[-n_test:]


def test_proposition_3_against_monte_carlo():
    """KL[P(Z_I|x) ‖ P(Z_I)] of Prop. 3 equals E_{z ~ P(Z_I|x)}[log P(z|x) − log P(z)] (Remarks 1 and 2);
    the prior is the law of Z_I = ΛZ_G + (1 − Λ)ε, Z_G = λ_G x + (1 − λ_G)ε; λ_G = 0 gives IBA's KL, λ_G = 1 none."""
    gen = torch.Generator().manual_seed(0)
    k = 6
    lam = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95, 0.99], dtype=torch.float64)
    lam_g = torch.rand(k, generator=gen, dtype=torch.float64)
    x = torch.randn(k, generator=gen, dtype=torch.float64) * 2
    mu = torch.randn(k, generator=gen, dtype=torch.float64)
    sigma = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
    closed = input_iba_module._input_kl(x, lam, 1 - lam, lam_g, mu, sigma)
    n = 400_000
    eps = torch.randn(n, k, generator=gen, dtype=torch.float64)
    posterior = torch.distributions.Normal(lam * x + (1 - lam) * mu, (1 - lam) * sigma)
    prior = torch.distributions.Normal(lam_g * lam * x + (1 - lam_g * lam) * mu, (1 - lam_g * lam) * sigma)
    z = posterior.loc + posterior.scale * eps
    ratio = posterior.log_prob(z) - prior.log_prob(z)
    mc, err = ratio.mean(0), ratio.std(0) / math.sqrt(n)
    assert (closed > 0).all() and ((mc - closed).abs() < 4 * err + 1e-6).all(), (mc, closed, err)
    z_g = lam_g * x + (1 - lam_g) * (mu + sigma * eps)  # the construction of Remark 1 (one noise ε)
    z_i = lam * z_g + (1 - lam) * (mu + sigma * eps)
    torch.testing.assert_close(z_i.mean(0), prior.loc, atol=5 * prior.scale.max().item() / math.sqrt(n), rtol=0)
    torch.testing.assert_close(z_i.std(0), prior.scale, rtol=1e-2, atol=0)
    iba_kl = -torch.log(1 - lam) + (1 - lam) ** 2 / 2 + lam ** 2 * ((x - mu) / sigma) ** 2 / 2 - 0.5
    torch.testing.assert_close(input_iba_module._input_kl(x, lam, 1 - lam, torch.zeros(k, dtype=torch.float64), mu,
                                                          sigma), iba_kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(input_iba_module._input_kl(x, lam, 1 - lam, torch.ones(k, dtype=torch.float64), mu,
                                                          sigma), torch.zeros(k, dtype=torch.float64), rtol=0,
                               atol=1e-12)


def _smooth(s):
    kernel = gaussian_kernel(1.0, s.dtype, "cpu")
    return F.conv2d(F.pad(s, (2, 2, 2, 2), mode="reflect"), kernel.expand(s.shape[1], 1, -1, -1), groups=s.shape[1])


def _critic(w, z):
    """One image's critic: 3×3 convolutions (strides 1, 2, 2), LeakyReLU 0.2, 2×2 average pool, 64 → 32 → 1."""
    h = z
    for i, stride in enumerate((1, 2, 2)):
        h = F.leaky_relu(F.conv2d(h, w[2 * i], w[2 * i + 1], stride=stride, padding=1), 0.2)
    h = F.leaky_relu(F.adaptive_avg_pool2d(h, 2).flatten(1) @ w[6] + w[7], 0.2)
    return (h @ w[8] + w[9])[:, 0]


def _thesis_loop(model, x, t, stats, gen, *, feature_steps, gan_steps, critic_iter, gan_batch, steps, n_noise=10,
                 beta=20.0, critic_lr=5e-5, mask_lr=0.05, clip=0.01):
    """InputIBA one image at a time (thesis ch. 6 §3.2–3.4) on the digits CNN at net.2: IBA (the paper loop),
    a WGAN per image (its own critic, RMSprop, clipped weights, the generator every critic_iter-th round),
    then the input bottleneck with Prop. 3's KL written out; the random draws of the batched call, in its
    order (the critics' initial weights drawn for the whole batch, then per round, then per step)."""
    batch, head = x.shape[0], model.net[:3]
    heat, alpha = _paper_loop(model, x, t, model.net[2], stats, gen, steps=feature_steps, return_alpha=True)
    lam_star = _smooth(torch.sigmoid(alpha))
    with torch.no_grad():
        R = head(x)
    active = stats.active.double()
    shapes = [((batch * 16, 32, 3, 3), 288), ((batch * 16,), 288), ((batch * 16, 16, 3, 3), 144),
              ((batch * 16,), 144), ((batch * 16, 16, 3, 3), 144), ((batch * 16,), 144), ((batch, 64, 32), 64),
              ((batch, 1, 32), 64), ((batch, 32, 1), 32), ((batch, 1, 1), 32)]
    weights = [(torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(fan) for s, fan in shapes]
    rounds = [(torch.randn(batch, gan_batch, 32, 8, 8, generator=gen, dtype=torch.float64),
               torch.randn(batch, gan_batch, 1, 8, 8, generator=gen, dtype=torch.float64)) for _ in range(gan_steps)]
    draws = [torch.randn(batch, n_noise, 1, 8, 8, generator=gen, dtype=torch.float64) for _ in range(steps)]
    masks, lam_gs = [], []
    for b in range(batch):
        w = [(p[b * 16:(b + 1) * 16] if i < 6 else p[b]).clone().requires_grad_() for i, p in enumerate(weights)]
        m = heat[b] / heat[b].max()
        logits = torch.logit(0.05 + 0.9 * m)[None].clone().requires_grad_()
        mean = torch.zeros(1, 1, 1, dtype=torch.float64, requires_grad=True)
        std = torch.ones(1, 1, 1, dtype=torch.float64, requires_grad=True)
        opt_d = torch.optim.RMSprop(w, lr=critic_lr)
        opt_g = torch.optim.RMSprop([{"params": [logits], "lr": mask_lr}, {"params": [mean], "lr": 0.1},
                                     {"params": [std], "lr": 0.05}])
        def fake_of(g):
            lam_g = torch.sigmoid(logits)
            return head(lam_g * x[b] + (1 - lam_g) * (std * g + mean)) * active

        for i, (eps, g) in enumerate(rounds):
            real = (lam_star[b] * R[b] + (1 - lam_star[b]) * (stats.std * eps[b] + stats.mean)) * active
            loss_d = _critic(w, fake_of(g[b]).detach()).mean() - _critic(w, real).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            with torch.no_grad():
                for p in w:
                    p.clamp_(-clip, clip)
            if i % critic_iter == 0:
                loss_g = -_critic(w, fake_of(g[b])).mean()
                opt_g.zero_grad()
                loss_g.backward()
                opt_g.step()
        lam_g = torch.sigmoid(logits.detach())
        alpha_i = torch.full_like(x[b:b + 1], 5.0, requires_grad=True)
        opt = torch.optim.Adam([alpha_i], lr=1.0)
        for eps in draws:
            lam = _smooth(torch.sigmoid(alpha_i))
            z = lam * x[b] + (1 - lam) * eps[b]  # ε_I ~ N(0, 1)
            ce = F.cross_entropy(model(z), t[b].repeat(n_noise))
            kept = 1 - lam_g * lam
            kl = (torch.log(kept / (1 - lam)) + (1 - lam) ** 2 / (2 * kept ** 2)
                  + x[b] ** 2 * (lam - lam_g * lam) ** 2 / (2 * kept ** 2) - 0.5)
            loss = ce + beta * kl.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        masks.append(_smooth(torch.sigmoid(alpha_i.detach()))[0])
        lam_gs.append(lam_g)
    return torch.stack(masks), torch.stack(lam_gs)


def test_input_iba_equals_the_theses_one_image_loop():
    model, x_train, x, y = _digits()
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    kw = dict(feature_steps=10, gan_steps=10, critic_iter=5, gan_batch=8, steps=10)
    heat, mask, lam_g = fastattr.input_iba(model, x, y, layer="net.2", statistics=stats, generator=3,
                                           return_masks=True, **kw)
    loop_mask, loop_lam_g = _thesis_loop(_frozen(model), x, y, stats, torch.Generator().manual_seed(3), **kw)
    assert heat.shape == (3, 8, 8) and mask.shape == lam_g.shape == (3, 1, 8, 8)
    assert ((lam_g - loop_lam_g).norm() / loop_lam_g.norm()).item() < 1e-4
    assert ((mask - loop_mask).norm() / loop_mask.norm()).item() < 1e-4
    torch.testing.assert_close(heat, mask.mean(1))
    assert (heat >= 0).all() and (heat <= 1).all() and heat.std() > 0.05  # a mask, not a constant
    assert not torch.allclose(heat[0], heat[1])


def test_input_iba_is_seeded_and_beats_random_on_insertion():
    model, x_train, x, y = _digits(n_test=8)
    model, x_train, x = model.float(), x_train.float(), x.float()  # float32: the WGAN's convolutions are 3× faster
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    kw = dict(layer="net.2", statistics=stats, gan_steps=20, gan_batch=16, steps=30)
    a = fastattr.input_iba(model, x, y, generator=5, **kw)
    b = fastattr.input_iba(model, x, y, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, fastattr.input_iba(model, x, y, generator=6, **kw))
    rand = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(0))
    ins = fastattr.metrics.insertion(model, x, a, y).mean()
    assert ins > fastattr.metrics.insertion(model, x, rand, y).mean() + 0.05
    assert fastattr.metrics.deletion(model, x, a, y).mean() < fastattr.metrics.deletion(model, x, rand, y).mean()


def test_input_iba_bad_input():
    model, x_train, x, _ = _digits(50, 2)
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    with pytest.raises(ValueError, match="layer 'net.42'"):
        fastattr.input_iba(model, x, layer="net.42", statistics=stats)
    with pytest.raises(ValueError, match="statistics are for a layer output"):
        fastattr.input_iba(model, x, layer="net.0", statistics=stats, feature_steps=1, gan_steps=1, steps=1)
    with pytest.raises(TypeError, match="statistics must be"):
        fastattr.input_iba(model, x, layer="net.2", statistics=stats.mean)
    for name, value in (("beta", -1.0), ("steps", 0), ("feature_beta", -2.0), ("feature_steps", 0),
                        ("gan_steps", 0), ("critic_iter", 0), ("gan_batch", 0), ("weight_clip", -0.1)):
        with pytest.raises(ValueError, match=name):
            fastattr.input_iba(model, x, layer="net.2", statistics=stats, **{name: value})
    with pytest.raises(ValueError, match="input_std must be > 0"):
        fastattr.input_iba(model, x, layer="net.2", statistics=stats, input_std=0.0)
    with pytest.raises(ValueError, match="input_mean of shape \\(3,\\) does not broadcast"):
        fastattr.input_iba(model, x, layer="net.2", statistics=stats, input_mean=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="inputs must be \\[B, C, H, W\\]"):
        fastattr.input_iba(model, x.flatten(2), layer="net.2", statistics=stats)
