"""``fastattr bench iba`` (issue 18): :func:`fastattr.iba` on a batch against the public IBA code's
procedure — one image at a time, Adam on that image's α, each step the whole network on a batch of
``n_noise`` copies with the bottleneck written in torch and the parameters' gradients computed (the
public code never freezes them) — on the digits CNN (B = 16) and the zoo ResNet-18 at ``layer3``
(B = 4 inputs of 3×112×112); and the fused ``bottleneck`` op (forward + backward) against its
reference."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..attribution import iba, iba_statistics
from ..ops import bottleneck
from ..zoo import load_digits, load_digits_cnn
from ..zoo.resnet import resnet18
from . import Table, machine_info, time_interleaved


def _smooth(s: torch.Tensor) -> torch.Tensor:
    """IBA's mask smoothing as its code writes it: ReflectionPad2d(2), then a 5×5 Gaussian of σ = 1 per channel."""
    r = torch.arange(-2, 3, dtype=s.dtype, device=s.device)
    g = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / 2)
    g = (g / g.sum()).expand(s.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(s, (2, 2, 2, 2), mode="reflect"), g, groups=s.shape[1])


def _public_loop(model, module, x, t, stats, steps: int = 10, n_noise: int = 10, beta: float = 10.0) -> torch.Tensor:
    """IBA's ``analyze`` for each image: the model whole on ``n_noise`` copies per step, parameters not frozen."""
    with torch.no_grad():
        got = {}
        h = module.register_forward_hook(lambda m, a, o: got.setdefault("r", o))
        model(x)
        h.remove()
    R, maps = got["r"], []
    active = stats.active.to(R.dtype)
    for b in range(x.shape[0]):
        alpha = torch.full_like(R[b:b + 1], 5.0, requires_grad=True)
        opt = torch.optim.Adam([alpha], lr=1.0)
        for _ in range(steps):
            lam = _smooth(torch.sigmoid(alpha))
            eps = torch.randn((n_noise,) + tuple(R.shape[1:]), dtype=R.dtype)
            z = lam * R[b:b + 1] + (1 - lam) * (stats.std * eps + stats.mean)
            cap = -torch.log(1 - lam) + 0.5 * (1 - lam) ** 2 + 0.5 * lam ** 2 * (
                (R[b:b + 1] - stats.mean) / stats.std) ** 2 - 0.5
            h = module.register_forward_hook(lambda m, a, o, z=z: z * active)
            out = model(x[b:b + 1].repeat(n_noise, 1, 1, 1))
            h.remove()
            loss = F.cross_entropy(out, t[b].repeat(n_noise)) + beta * (cap * active).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        maps.append(alpha.detach())
    model.zero_grad(set_to_none=True)
    return torch.cat(maps)


def iba_table(repeat: int = 3, device: Optional[str] = None, batch: int = 16, resnet_batch: int = 4,
              size: int = 112) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    table = Table(name=f"iba: the batched bottleneck against the public code's one-image loop, {device.type}",
                  columns=["case", "implementation", "ms", "speed-up"], machine=machine_info(device),
                  params={"repeat": repeat, "device": str(device), "batch": batch, "resnet_batch": resnet_batch,
                          "size": size})
    digits = load_digits_cnn().to(device)
    train, _ = load_digits("train", 500)
    x, _ = load_digits("test", batch)
    resnet = resnet18(num_classes=10).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    big = torch.rand(resnet_batch, 3, size, size, generator=gen).to(device)
    cases = [(f"digits CNN, B = {batch}, net.2", digits, digits.net[2], x.to(device), train.to(device)),
             (f"ResNet-18 layer3, B = {resnet_batch} × 3×{size}×{size}", resnet, resnet.layer3, big,
              torch.rand(16, 3, size, size, generator=gen).to(device))]
    for name, model, module, inputs, data in cases:
        stats = iba_statistics(model, module, data)
        t = model(inputs).argmax(1)
        impls = {"fastattr.iba (batched)": lambda m=model, mod=module, z=inputs, s=stats, tt=t: iba(
                     m, z, tt, layer=mod, statistics=s, generator=0),
                 "public code's loop": lambda m=model, mod=module, z=inputs, s=stats, tt=t: _public_loop(
                     m, mod, z, tt, s)}
        times, ratios = time_interleaved(impls, device, repeat=repeat, warmup=1)
        base = "public code's loop"
        for impl, s in times.items():
            table.add(name, impl, s * 1e3, 1.0 if impl == base else times[base] / s)
    R = torch.randn(16, 256, 7, 7, generator=gen, dtype=torch.float32).to(device)
    alpha = torch.full_like(R, 5.0).requires_grad_()
    mu, sd = torch.randn(256, 7, 7, generator=gen).to(device), (torch.rand(256, 7, 7, generator=gen) + 0.5).to(device)
    eps = torch.randn(16, 10, 256, 7, 7, generator=gen).to(device)

    def op(backend):
        def run():
            Z, cap = bottleneck(R, alpha, mu, sd, eps, backend=backend)
            torch.autograd.grad((Z.sum() + cap.sum()), alpha)
        return run

    times, _ = time_interleaved({"fused op": op(None), "reference": op("reference")}, device, repeat=repeat,
                                warmup=1)
    for impl, s in times.items():
        table.add("bottleneck op fwd + bwd, 16 × 10 × 256×7×7", impl, s * 1e3, times["reference"] / s)
    table.notes.append(f"{repeat} round-robin rounds, medians; torch threads = {torch.get_num_threads()}; IBA "
                       "defaults (10 steps × 10 draws, Adam lr 1, β = 10); speed-up = the loop's (or the "
                       "reference's) time over each row's")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 3) -> list[Table]:
    return [iba_table(repeat=repeat, device=device)]
