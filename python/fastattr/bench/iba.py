"""``fastattr bench iba`` (issue 18): :func:`fastattr.iba` on a batch against the public IBA code's
procedure — one image at a time, Adam on that image's α, each step the whole network on a batch of
``n_noise`` copies with the bottleneck written in torch and the parameters' gradients computed (the
public code never freezes them) — on the digits CNN (B = 16) and the zoo ResNet-18 at ``layer3``
(B = 4 inputs of 3×112×112); and the fused ``bottleneck`` op (forward + backward) against its
reference (table ``speed``). Table ``reproduction``: the thesis's feature-importance comparison (ch. 6
§4.4, ch. 8 §3.1) on held-out digits — insertion / deletion AUC and Sensitivity-N of IBA, Inverse IBA,
multi-layer IBA and InputIBA against Grad-CAM, Integrated Gradients and a random map."""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..attribution import grad_cam, iba, iba_statistics, input_iba, integrated_gradients, multi_layer_iba
from ..metrics import deletion, insertion, sensitivity_n
from ..ops import bottleneck
from ..zoo import load_digits, load_digits_cnn
from ..zoo.resnet import resnet18, resnet50
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


def iba_table(repeat: int = 3, device: Optional[str] = None, batch: int = 16, resnet_batch: Optional[int] = None,
              size: Optional[int] = None, arch: Optional[str] = None) -> Table:
    """The digits CNN and a zoo ResNet at ``layer3``: ResNet-18, B = 4 × 3×112² on CPU; on CUDA the issue's GPU
    row, ResNet-50, B = 16 × 3×224² (``arch``, ``resnet_batch``, ``size`` override)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    arch = arch if arch is not None else ("resnet50" if cuda else "resnet18")
    resnet_batch = resnet_batch if resnet_batch is not None else (16 if cuda else 4)
    size = size if size is not None else (224 if cuda else 112)
    table = Table(name=f"iba: the batched bottleneck against the public code's one-image loop, {device.type}",
                  columns=["case", "implementation", "ms", "speed-up"], machine=machine_info(device),
                  params={"repeat": repeat, "device": str(device), "batch": batch, "resnet_batch": resnet_batch,
                          "size": size, "arch": arch})
    digits = load_digits_cnn().to(device)
    train, _ = load_digits("train", 500)
    x, _ = load_digits("test", batch)
    resnet = {"resnet18": resnet18, "resnet50": resnet50}[arch](num_classes=10).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    big = torch.rand(resnet_batch, 3, size, size, generator=gen).to(device)
    label = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}[arch]
    cases = [(f"digits CNN, B = {batch}, net.2", digits, digits.net[2], x.to(device), train.to(device)),
             (f"{label} layer3, B = {resnet_batch} × 3×{size}×{size}", resnet, resnet.layer3, big,
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


def reproduction_table(batch: int = 200, device: Optional[str] = None) -> Table:
    """Insertion / deletion AUC (probability of the predicted class, pixels to or from 0) and Sensitivity-N
    (logit, 200 subsets per n, the mean over n = 1 … 32) on the first ``batch`` held-out digits, IBA-family
    maps at the digits CNN's last conv layer (``net.2``, statistics over the 1347 training digits, the
    thesis's hyper-parameters, seed 0) against Grad-CAM at the same layer, Integrated Gradients (50
    steps, zero baseline, summed over channels) and a uniform random map."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_digits_cnn().to(device)
    train, _ = load_digits("train")
    x, _ = load_digits("test", batch)
    x, train = x.to(device), train.to(device)
    t = model(x).argmax(1)
    stats = iba_statistics(model, "net.2", train)
    first = iba_statistics(model, "net.0", train)
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "IBA (net.2)": lambda: iba(model, x, t, layer="net.2", statistics=stats, generator=0),
        "Inverse IBA (net.2)": lambda: iba(model, x, t, layer="net.2", statistics=stats, inverse=True, generator=0),
        "Multi-layer IBA (net.0 ∩ net.2)": lambda: multi_layer_iba(model, x, t, layers=["net.0", "net.2"],
                                                                   statistics=[first, stats], generator=0),
        "InputIBA (net.2)": lambda: input_iba(model, x, t, layer="net.2", statistics=stats, generator=0),
        "Grad-CAM (net.2)": lambda: grad_cam(model, x, t, layer="net.2").reshape(batch, 8, 8),
        "Integrated Gradients": lambda: integrated_gradients(model, x, t).sum(1),
        "random": lambda: torch.rand(batch, 8, 8, generator=torch.Generator().manual_seed(0)).to(device),
    }
    table = Table(name=f"IBA family on held-out digits (digits CNN, B = {batch}): insertion / deletion AUC and "
                       "Sensitivity-N", columns=["method", "insertion AUC ↑", "deletion AUC ↓", "Sensitivity-N ↑",
                                                 "s"],
                  machine=machine_info(device), params={"batch": batch, "device": str(device)})
    iba(model, x[:1], t[:1], layer="net.2", statistics=stats, steps=1)  # one-time setup (tracing) off the clock
    for name, explain in methods.items():
        start = time.perf_counter()
        with torch.no_grad() if name == "random" else torch.enable_grad():
            heat = explain().detach()
        seconds = time.perf_counter() - start
        ins = insertion(model, x, heat, t).mean().item()
        dele = deletion(model, x, heat, t).mean().item()
        sens = sensitivity_n(model, x, heat, t, generator=0).mean().item()
        table.add(name, ins, dele, sens, seconds)
    table.notes.append(f"torch threads = {torch.get_num_threads()}; s: seconds to explain the batch; "
                       "multi-layer IBA's map is binary (the top halves of both layers' maps intersected): its "
                       "pixels tie, ranked in the order the metrics' sort leaves them")
    return table


#: the tables of ``fastattr bench iba``, by the name ``--tables`` picks them with
TABLES: dict[str, Callable[..., list[Table]]] = {
    "speed": lambda device, repeat: [iba_table(repeat=repeat, device=device)],
    "reproduction": lambda device, repeat: [reproduction_table(device=device)],
}


def default_tables(device: Optional[str] = None, repeat: int = 3,
                   tables: Optional[Sequence[str]] = None) -> list[Table]:
    """The speed table and the reproduction table (:data:`TABLES`), or those named in ``tables``."""
    out = []
    for name in tables or TABLES:
        out += TABLES[name](device, repeat)
    return out
