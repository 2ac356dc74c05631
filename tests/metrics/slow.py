"""Slow, obviously-correct references for the metric tests: one model call per perturbed input, Python
loops, orders from Python's sort with the key (−score, index)."""
import torch


def order(scores):
    """Feature indices by decreasing score, ties by increasing index."""
    s = scores.tolist()
    return sorted(range(len(s)), key=lambda i: (-s[i], i))


def perturb(x, base, changed):
    """One example ``x`` (``[C, ...]``) with the units in ``changed`` (bool over pixels or elements) taken
    from ``base``."""
    n_units = changed.numel()
    x3, b3 = x.reshape(-1, n_units), base.reshape(-1, n_units)
    return torch.where(changed.view(1, -1), b3, x3).reshape(x.shape)


@torch.no_grad()
def score(model, x, t, reader="probability"):
    out = model(x.unsqueeze(0))[0]
    if reader == "probability":
        return out.softmax(-1)[t].item()
    if reader == "logit":
        return out[t].item()
    if reader == "logits":
        return out
    raise ValueError(reader)


def units_of(segment_ids, chosen):
    """Bool unit mask of the segments in ``chosen`` (segment ids ``[U]``)."""
    mask = torch.zeros(segment_ids.numel(), dtype=torch.bool)
    for s in chosen:
        mask |= segment_ids.reshape(-1) == s
    return mask


def segment_scores(amap, segment_ids, n_segments):
    flat, ids = amap.reshape(-1), segment_ids.reshape(-1)
    return torch.tensor([flat[ids == s].sum().item() for s in range(n_segments)], dtype=torch.float64)


def trapezoid(ys, xs):
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
