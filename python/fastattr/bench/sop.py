"""``fastattr bench sop``: the Sum-of-Parts forward (and ``explain``) of the zoo's digits SOP against
the model-only floor: the backbone alone on the same ``B·G`` masked inputs, at its best batch size.
What SOP adds over the floor is GroupGen (patch attention, sparsemax, the masks), the masked copies
and GroupSelect. ``--tables reproduction``: the paper's Table 1 on held-out digits."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .. import available_backends
from ..attribution import integrated_gradients, occlusion, rise, saliency, smoothgrad
from ..metrics import deletion, grouped_deletion, grouped_insertion, insertion
from ..models import SumOfParts, first_equal_group
from ..ops import distinct_copies, group_gen, group_masks, group_select
from ..zoo import load_digits, load_digits_cnn, load_digits_sop
from ..zoo.resnet import resnet18, resnet50
from . import Table, machine_info, time_interleaved


def _best_chunk(fn, inputs: torch.Tensor, device: torch.device, repeat: int = 5) -> int:
    """The batch size (of 64 … all) at which ``fn`` runs ``inputs`` fastest: each size run once to warm up (its
    first call pays for fresh buffers), then timed in ``repeat`` round-robin rounds, by the median."""
    sizes = sorted(c for c in {64, 256, 1024, 4096, inputs.shape[0]} if c <= inputs.shape[0])

    def run(chunk):
        def call():
            with torch.no_grad():
                for i in range(0, inputs.shape[0], chunk):
                    fn(inputs[i:i + chunk])
        return call

    times, _ = time_interleaved({c: run(c) for c in sizes}, device, repeat=repeat)
    return min(sizes, key=times.__getitem__)


def _forward_table(sop, x: torch.Tensor, title: str, backbone_name: str, device: torch.device, repeat: int,
                   params: dict, throughput: bool = False) -> Table:
    """Floor, the backbone on the distinct copies SOP runs, ``SumOfParts.forward`` (default and floor-sized
    chunks) and ``explain`` of ``sop`` on ``x``; with ``throughput``, also the backbone on the ``B`` inputs
    themselves and an images-per-second column."""
    e = sop.explain(x)
    groups = e.masks.shape[1]
    masks = e.masks.unsqueeze(2) if x.dim() == 4 else e.masks
    copies = (x.unsqueeze(1) * masks).reshape(-1, *x.shape[1:])  # the B·G masked inputs
    first = first_equal_group(e.masks)
    distinct = copies[(first == torch.arange(groups, device=first.device)).view(-1)]  # what SOP runs
    chunk = _best_chunk(sop.backbone, copies, device)

    def backbone(inputs):
        def run():
            with torch.no_grad():
                for i in range(0, inputs.shape[0], chunk):
                    sop.backbone(inputs[i:i + chunk])
        return run

    def forward(max_batch=None):
        saved = sop.max_batch
        sop.max_batch = max_batch
        try:
            with torch.no_grad():
                sop(x)
        finally:
            sop.max_batch = saved

    impls = {"model-only floor": backbone(copies),
             "model-only, the distinct copies": backbone(distinct),
             "SumOfParts.forward": forward,
             f"SumOfParts.forward, max_batch={chunk}": lambda: forward(chunk),
             "SumOfParts.explain": lambda: sop.explain(x)}
    if throughput:
        impls["backbone on the B inputs"] = backbone(x)
    times, vs_floor = time_interleaved(impls, device, repeat=repeat)
    table = Table(name=f"{title}, batch {x.shape[0]}, G = {groups} groups, {device.type}",
                  columns=["implementation", "ms", "time / floor", "time / distinct copies"]
                  + (["images / s"] if throughput else []),
                  machine=machine_info(device),
                  params={"batch": x.shape[0], "groups": groups, "backbone_inputs": copies.shape[0],
                          "distinct_inputs": distinct.shape[0], "floor_chunk": chunk, "repeat": repeat,
                          "device": str(device), **params})
    for name, t in times.items():
        table.add(name, t * 1e3, vs_floor[name], t / times["model-only, the distinct copies"],
                  *([x.shape[0] / t] if throughput else []))
    table.notes.append(f"{repeat} round-robin rounds; times are medians, ratios to the floor medians of per-round "
                       f"ratios, ratios to the distinct copies ratios of medians; torch threads = "
                       f"{torch.get_num_threads()}")
    table.notes.append(f"floor: the backbone ({backbone_name}) alone on the {copies.shape[0]} masked inputs "
                       f"(B·G) in chunks of {chunk} (the fastest of 64 … all over 5 rounds after a warm-up); "
                       f"distinct copies: the "
                       f"{distinct.shape[0]} of them SumOfParts runs (an input's groups holding the same patches "
                       "run once); SumOfParts: GroupGen, the masked copies, the chunked backbone and GroupSelect, "
                       "default chunks unless max_batch is given")
    return table


def run(batch: int = 32, device: Optional[str] = None, repeat: int = 3) -> Table:
    """The zoo's digits SOP (8 groups of 2×2-pixel patches) on ``batch`` held-out digits."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x, _ = load_digits("test", batch)
    return _forward_table(load_digits_sop().to(device), x.to(device), "Sum-of-Parts forward, digits SOP",
                          "digits CNN net[:8]", device, repeat, {})


def resnet_table(batch: int = 8, size: int = 64, groups: int = 8, device: Optional[str] = None,
                 repeat: int = 3, arch: str = "resnet18", patch_size: int = 8, throughput: bool = False) -> Table:
    """A SumOfParts around the zoo's ``arch`` features (its ``fc`` replaced by the identity, random
    weights: the timing does not depend on them), ``size``² RGB inputs in ``patch_size``² patches,
    ``groups`` groups of 20 % of the patches: a backbone whose forward dominates, where the digits CNN's
    does not. ``throughput``: images per second, and the backbone's own forward on the ``batch`` inputs
    (SOP's ideal is that throughput divided by ``groups``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = {"resnet18": resnet18, "resnet50": resnet50}[arch](num_classes=10)
    backbone.fc = nn.Identity()
    backbone.eval()
    sop = SumOfParts(backbone.to(device), 10, input_shape=(3, size, size), patch_size=patch_size, n_groups=groups,
                     k=0.2, generator=0)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    label = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}[arch]
    return _forward_table(sop, x, f"Sum-of-Parts {'throughput' if throughput else 'forward'}, {label} features, "
                                  f"3×{size}×{size}", f"{label} up to its pooled features", device, repeat,
                          {"size": size, "arch": arch, "patch_size": patch_size}, throughput=throughput)


def throughput_table(device: Optional[str] = None, repeat: int = 3, **kw) -> Table:
    """The issue's GPU row: a ResNet-50 SOP at 224² in 16×16-pixel patches with 32 groups, B = 16, in images
    per second (:func:`resnet_table` with ``throughput``; ``kw`` overrides its arguments)."""
    kw = {"arch": "resnet50", "batch": 16, "size": 224, "groups": 32, "patch_size": 16, **kw}
    return resnet_table(device=device, repeat=repeat, throughput=True, **kw)


#: SOP's four ops are timed on the shapes SOP gives them: ``group_gen`` ``(B, P, D, d, h, G, K)``,
#: ``group_masks`` ``(B, R, n, G, K)``, ``distinct_copies`` ``(B, G, P, C, L)`` and ``group_select``
#: ``(B, G, N, C, h)`` — the digits SOP (16 patches of 4 pixels, d = 32, one head; 16 candidate rows over 16
#: patches, 8 groups of 8, 1 × 64 pixels, 10 classes, 64 features, 6.7 distinct copies per input) at B = 32 and
#: on the whole test split, and a ResNet-50 SOP at 224² in 16-pixel patches (196 patches of 768, d = 64; 196
#: rows over 196 patches, 32 groups of 20 %, 3 × 224² pixels, 2048 features) at B = 16
OP_SHAPES = {"group_gen": ((32, 16, 4, 32, 1, 8, 8), (450, 16, 4, 32, 1, 8, 8),
                           (16, 196, 768, 64, 1, 32, 39)),
             "group_masks": ((32, 16, 16, 8, 8), (450, 16, 16, 8, 8), (16, 196, 196, 32, 39)),
             "distinct_copies": ((32, 8, 16, 1, 64), (450, 8, 16, 1, 64), (16, 32, 196, 3, 224 * 224)),
             "group_select": ((32, 8, 218, 10, 64), (450, 8, 3005, 10, 64), (16, 32, 512, 10, 2048))}


def _op_inputs(op: str, shape: tuple, device: torch.device) -> tuple:
    """Seeded inputs of ``op`` at ``shape``: logits ``3·N(0, 1)``; masks of half the patches, a fifth of the
    groups a repeat of another of the input; patches, weights, pixels, features, head and queries ``N(0, 1)``."""
    gen = torch.Generator().manual_seed(0)
    if op == "group_gen":
        b, n, width, d, h, g, k = shape
        return (*(torch.randn(*s, generator=gen).to(device) for s in ((b, n, width), (d, width), (d,), (n, d),
                                                                        (h * d, d), (h * d, d))), g, k)
    if op == "group_masks":
        b, r, n, g, k = shape
        return 3 * torch.randn(b, r, n, generator=gen).to(device), g, k
    if op == "distinct_copies":
        b, g, p, c, length = shape
        masks = torch.rand(b, g, p, generator=gen) < 0.5
        repeat = torch.rand(b, g, generator=gen) < 0.2
        masks[repeat] = masks[:, :1].expand(-1, g, -1)[repeat]
        side, cells = math.isqrt(length), math.isqrt(p)       # square images in a square grid of patches
        cell = torch.arange(side) * cells // side
        unit_patch = (cell.view(-1, 1) * cells + cell.view(1, -1)).reshape(-1)
        return (torch.randn(b, c, length, generator=gen).to(device), masks.to(device),
                first_equal_group(masks).to(device), unit_patch.to(device))
    b, g, n, c, h = shape
    z, w, bias, q = (torch.randn(*s, generator=gen).to(device) for s in ((n, h), (c, h), (c,), (c, h)))
    return z, torch.randint(0, n, (b, g), generator=gen).to(device), w, bias, q


def ops_table(device: Optional[str] = None, repeat: int = 20) -> Table:
    """SOP's ops, ``group_gen`` (GroupGen: the patch attention and the selection), ``group_masks`` (the selection
    alone), ``distinct_copies`` (the backbone's inputs) and ``group_select`` (GroupSelect), on every backend
    against their references, the torch calls SOP made before them (the projection, the position, the folded
    bilinear form and two products, then the selection; stable sorts, gathers and a scatter; the numbering, two
    index selects and a product; a gather, two products, sparsemax and a weighted sum — exlib ranks and scores
    its groups with torch ops likewise), on :data:`OP_SHAPES`, without gradients."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backends = available_backends(device)
    table = Table(name=f"SOP's ops against their torch references, {device.type}",
                  columns=["op", "shape", "backend", "ms", "speed-up vs reference"], machine=machine_info(device),
                  params={"shapes": {op: [list(s) for s in shapes] for op, shapes in OP_SHAPES.items()},
                          "repeat": repeat, "device": str(device)})
    for op, shapes in OP_SHAPES.items():
        fn = {"group_gen": group_gen, "group_masks": group_masks, "distinct_copies": distinct_copies,
              "group_select": group_select}[op]
        for shape in shapes:
            args = _op_inputs(op, shape, device)

            def call(name, args=args, fn=fn):
                def run():
                    with torch.no_grad():
                        fn(*args, backend=name)
                return run

            times, ratios = time_interleaved({name: call(name) for name in backends}, device, repeat=repeat)
            for name in backends:
                table.add(op, ", ".join(map(str, shape)), name, times[name] * 1e3, 1.0 / ratios[name])
    table.notes.append(f"{repeat} round-robin rounds; times are medians, speed-ups medians of per-round ratios; "
                       f"torch threads = {torch.get_num_threads()}; shapes: group_gen (B, P, D, d, h, G, K), "
                       "group_masks (B, R, n, G, K), "
                       "distinct_copies (B, G, P, C, L), group_select (B, G, N, C, h)")
    return table


#: the digits SOP's forward is timed at these batches of held-out digits (the last is the whole test split;
#: ``B·G`` = 256, 1024 and 3600 backbone inputs): GroupGen and GroupSelect are a few dozen calls on small
#: tensors, whose fixed cost weighs less as the batch grows
DIGITS_BATCHES = (32, 128, 450)

#: the post-hoc methods of the reproduction, each with its defaults (SmoothGrad and RISE seeded)
POST_HOC: dict[str, Callable] = {
    "integrated_gradients": integrated_gradients,
    "saliency": saliency,
    "smoothgrad": lambda m, x, t: smoothgrad(m, x, t, generator=0),
    "occlusion": occlusion,
    "rise": lambda m, x, t: rise(m, x, t, generator=0),
}


def _scores(model, x: torch.Tensor, t: torch.Tensor, attr: torch.Tensor, groups: torch.Tensor,
            group_scores: Optional[torch.Tensor] = None) -> list[float]:
    """Mean insertion, deletion, grouped insertion and grouped deletion AUC (target probability, black
    baseline); the grouped ones over ``groups``, ranked by ``group_scores`` or by the map's sum per group."""
    grouped = attr if group_scores is None else group_scores
    values = [insertion(model, x, attr, t), deletion(model, x, attr, t),
              grouped_insertion(model, x, grouped, t, groups=groups),
              grouped_deletion(model, x, grouped, t, groups=groups)]
    return [v.double().mean().item() for v in values]


def reproduction_table(batch: int = 100, device: Optional[str] = None,
                       methods: Optional[Sequence[str]] = None) -> Table:
    """SOP's Table 1 on held-out digits: accuracy on the whole test split, and insertion / deletion and
    grouped insertion / deletion AUC of the SOP's own grouped attribution against post-hoc methods
    (:data:`POST_HOC`, or those named in ``methods``) on the same SOP model and on the bare CNN it wraps,
    for the first ``batch`` test digits, each model explaining its own prediction. Grouped metrics use the
    SOP's groups of each input (for the CNN's prediction on the CNN rows); a post-hoc map scores each group
    by the sum of its map over it (SOP App. C.2.2: "we use groups generated from SOP")."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = list(POST_HOC) if methods is None else list(methods)
    unknown = [m for m in names if m not in POST_HOC]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(POST_HOC)}")
    sop, cnn = load_digits_sop().to(device), load_digits_cnn().to(device)
    x_all, y_all = load_digits("test")
    x_all, y_all = x_all.to(device), y_all.to(device)
    x = x_all[:batch]
    table = Table(name=f"SOP Table 1 on held-out digits: the digits SOP and its bare CNN, {x.shape[0]} test digits "
                       "(accuracy on all 450)",
                  columns=["model", "attribution", "accuracy", "insertion ↑", "deletion ↓", "grouped insertion ↑",
                           "grouped deletion ↓"],
                  machine=machine_info(device), params={"batch": x.shape[0], "methods": names, "device": str(device)})
    for label, model in (("SOP", sop), ("CNN", cnn)):
        with torch.no_grad():
            accuracy = (model(x_all).argmax(1) == y_all).double().mean().item()
            t = model(x).argmax(1)
        e = sop.explain(x, t)
        if model is sop:
            table.add(label, "sop (its own groups)", accuracy, *_scores(sop, x, t, e.feature_map(), e.masks, e.scores))
        for name in names:
            attr = POST_HOC[name](model, x, t).detach().sum(1)
            table.add(label, name, accuracy, *_scores(model, x, t, attr, e.masks))
    table.notes.append("AUC of the target probability over the fraction of pixels changed, black (0) baseline, as "
                       "SOP; targets: each model's prediction; the SOP map gives each pixel the sum of the scores of "
                       "the groups holding it; maps summed over the channel; SmoothGrad and RISE seeded (0)")
    return table


#: the tables of ``fastattr bench sop``, by the name ``--tables`` picks them with
TABLES: dict[str, Callable[..., list[Table]]] = {
    "forward": lambda device, repeat: [run(batch=b, device=device, repeat=repeat) for b in DIGITS_BATCHES]
    + [resnet_table(device=device, repeat=repeat)],
    "throughput": lambda device, repeat: [throughput_table(device=device, repeat=repeat)],
    "reproduction": lambda device, repeat: [reproduction_table(device=device)],
    "ops": lambda device, repeat: [ops_table(device=device)],
}


def default_tables(device: Optional[str] = None, repeat: int = 3,
                   tables: Optional[Sequence[str]] = None) -> list[Table]:
    """``forward``: the shipped digits SOP (8 groups of 2×2-pixel patches) at each batch of
    :data:`DIGITS_BATCHES`, and a ResNet-18 SOP on 8 inputs of 3×64×64 (:func:`resnet_table`);
    ``throughput``: the GPU row, a ResNet-50 SOP at 224² with 32 groups in images/s
    (:func:`throughput_table`; on CUDA only unless named); ``ops``: the four ops SOP runs (GroupGen, its
    selection alone, the distinct copies, GroupSelect) on every backend (:func:`ops_table`); ``reproduction``: the
    paper's Table 1 on 100 held-out digits (:func:`reproduction_table`) — all of :data:`TABLES`, or those
    named in ``tables``."""
    out = []
    cuda = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda"
    for name in tables or [t for t in TABLES if cuda or t != "throughput"]:
        out += TABLES[name](device, repeat)
    return out
