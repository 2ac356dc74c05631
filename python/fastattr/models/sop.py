"""Sum-of-Parts models (SOP; You et al., "Sum-of-Parts Models: Faithful Attributions for Groups of
Features", §3, App. B–C; SPEC §6): a self-attributing wrapper around any backbone ``h: x → z ∈ R^h``
whose prediction is a weighted sum of the predictions on groups of input features,
``y = Σ_i c_i · C h(S_i ⊙ x)``, so the grouped attribution ``{(S_i, c_i)}`` is faithful by construction.

- GroupGen: the input is cut into ``P`` patches with embeddings ``e`` (a linear projection plus a
  learned position), ``A = sparsemax(W_q e (W_k e)ᵀ / √d)`` per head; each row is a candidate group
  over patches. The ``n_groups`` rows of largest max attention are kept, and each is binarised to its
  top ``⌊k·P⌉`` patches (straight-through: the forward uses the 0/1 mask, the backward the attention
  weights scaled to max 1, so GroupGen trains through the backbone). ``W_k`` starts equal to ``W_q``
  (a patch attends first to itself and to patches like it, so the candidate groups start distinct).
- The backbone runs on the ``B·G`` masked copies ``S_i ⊙ x`` (0 outside the group) in chunks of the
  engine's chunk iterator (:class:`~fastattr.core.ChunkGrid`, ``max_batch`` / ``memory_budget``).
- GroupSelect: partial logits ``y_i = C z_i`` (``C``: a linear class head), group scores
  ``c = sparsemax((W_q' C)(W_k' z)ᵀ / √h)`` over the groups, one distribution per class.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._backend import differentiating_transform
from ..core import (ChunkGrid, ChunkRunner, ModelCallError, check_count, check_flag, check_inputs, check_number,
                    chunk_size, fraction_count, is_integer, make_generator, measured_input_factor, model_entry,
                    model_errors, model_guard, resolve_target, run_model)
from ..ops import distinct_copies, first_equal_group, group_gen, group_select, sparsemax

__all__ = ["SOPExplanation", "SumOfParts", "first_equal_group", "train_sop"]

#: the fewest masked copies per backbone call by default on CPU. A small CNN's activations are a hundred
#: times its input, so the engine's budget keeps its chunks cache-sized (chunks of 1024 digits run
#: 1.5× slower than 256–512 here); a deep backbone's budget would leave a handful of copies per
#: call, where per-call costs and thin matrix products dominate (ResNet-18 at 64²: 4 or 8 copies per
#: call are 1.7× / 1.3× slower than 32).
MIN_DEFAULT_CHUNK = 32


class SOPExplanation(NamedTuple):
    """The grouped attribution of a :class:`SumOfParts` prediction (SOP Def. 3).

    ``masks`` bool ``[B, G, *map]``: group ``S_i`` over the input's features (``map``: ``(H, W)`` for
    images, channel-shared; the input's own shape for sequences). ``scores`` ``c_i`` and
    ``partial_logits`` ``y_i``: ``[B, G]`` for ``target`` (``[B]``), or ``[B, G, C]`` for every class
    (``target="all"``; ``target`` is then None). ``logits`` ``[B, C]``: ``y = Σ_i c_i y_i``."""

    masks: torch.Tensor
    scores: torch.Tensor
    partial_logits: torch.Tensor
    logits: torch.Tensor
    target: Optional[torch.Tensor]

    def feature_map(self) -> torch.Tensor:
        """The grouped attribution as a map over the features, ``Σ_i c_i S_i``: each feature gets the sum of
        the scores of the groups that hold it; ``[B, *map]`` (``[B, C, *map]`` for ``target="all"``)."""
        masks = self.masks.to(self.scores.dtype)
        if self.scores.dim() == 3:
            return torch.einsum("bgc,bg...->bc...", self.scores, masks)
        return torch.einsum("bg,bg...->b...", self.scores, masks)


def _uniform(shape: Sequence[int], fan_in: int, generator: torch.Generator, dtype, device) -> nn.Parameter:
    """PyTorch's default Linear initialisation, ``U(−1/√fan_in, 1/√fan_in)``, drawn from ``generator``."""
    bound = 1.0 / math.sqrt(fan_in)
    values = (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return nn.Parameter(values.to(dtype=dtype, device=device))


def _linear(n_in: int, n_out: int, generator: torch.Generator, dtype, device, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=bias, device="meta")
    layer.weight = _uniform((n_out, n_in), n_in, generator, dtype, device)
    if bias:
        layer.bias = _uniform((n_out,), n_in, generator, dtype, device)
    return layer


class SumOfParts(nn.Module):
    """Sum-of-Parts wrapper: ``forward(x)`` returns the logits ``y = Σ_i c_i y_i`` ``[B, C]``;
    :meth:`explain` returns the groups and their scores (You et al., "Sum-of-Parts Models", §3; SPEC §6).

    Args:
        backbone: a module mapping a batch of inputs (or of embedded tokens) to features ``[B, h]``;
            held, not copied (``train_sop(..., finetune=True)`` updates it).
        num_classes: ``C``, the number of outputs.
        input_shape: one example's shape: ``(C, H, W)`` images, ``(T, D)`` embedded token sequences,
            ``(T,)`` token ids (with ``embedding``) or ``T`` scalar features.
        patch_size: the side of a square image patch, or tokens per patch; must divide ``H``, ``W``
            (``T``) exactly (no padding).
        n_groups: ``G``, groups per input, at most ``n_heads ×`` the number of patches.
        k: fraction of the patches in each group, in (0, 1] (SPEC §6; exlib uses 0.2).
        head: an ``nn.Linear(h, num_classes)`` whose weights initialise the class head ``C`` (copied;
            SOP's "initialise C to the linear classifier of a pretrained model"); default random.
        embedding: for token ids ``[B, T]``: the module mapping them to ``[B, T, D]``; the masks act
            on the embedded tokens and ``backbone`` takes ``[B, T, D]``.
        n_heads, attn_dim: GroupGen's attention heads and their width.
        max_batch, memory_budget: backbone inputs per chunk (or bytes); default from free memory.
            Results do not depend on them.
        unique_copies: without gradients and with the backbone in eval mode, run the backbone once on
            groups of one input that hold the same patches (their copies are the same input), and give
            each the same features; off, every one of the ``B·G`` copies runs (a backbone whose eval
            forward draws random numbers sees one draw per distinct copy when on).
        generator: seed (int or ``torch.Generator``) of GroupGen's, GroupSelect's (and a default
            head's) initial weights.

    Shapes: ``x [B, *input_shape]`` → logits ``[B, C]``; masks ``[B, G, H, W]`` for images,
    ``[B, G, *input_shape]`` for sequences. The masked-out features are 0 (``S_i ⊙ x``). SOP's own
    layers start in eval mode (:func:`train_sop` switches them for training); the backbone keeps its mode.

    Example::

        >>> net = fastattr.zoo.load_digits_cnn().net
        >>> sop = fastattr.SumOfParts(net[:8], 10, input_shape=(1, 8, 8), patch_size=2, n_groups=8,
        ...                           k=0.5, head=net[8])
        >>> fastattr.train_sop(sop, fastattr.zoo.load_digits("train"), epochs=5)
        >>> e = sop.explain(x)  # e.masks [B, 8, 8, 8] bool, e.scores [B, 8]
    """

    _input_factor = 24.0  # the backbone's activations per input byte (measured at construction)
    unique_copies = True

    def __init__(self, backbone: nn.Module, num_classes: int, *, input_shape: Sequence[int], patch_size: int,
                 n_groups: int, k: float = 0.2, head: Optional[nn.Linear] = None,
                 embedding: Optional[nn.Module] = None, n_heads: int = 1, attn_dim: int = 64,
                 max_batch: Optional[int] = None, memory_budget: Optional[int] = None, unique_copies: bool = True,
                 generator=None):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module mapping inputs to features [B, h], "
                            f"got {type(backbone).__name__}")
        if embedding is not None and not isinstance(embedding, nn.Module):
            raise TypeError(f"embedding must be an nn.Module or None, got {type(embedding).__name__}")
        self.num_classes = check_count(num_classes, "num_classes")
        self.n_groups = check_count(n_groups, "n_groups")
        self.n_heads = check_count(n_heads, "n_heads")
        self.attn_dim = check_count(attn_dim, "attn_dim")
        self.patch_size = check_count(patch_size, "patch_size")
        self.k = float(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else k
        if not isinstance(self.k, float) or not 0.0 < self.k <= 1.0:
            raise ValueError(f"k (the fraction of patches per group) must be in (0, 1], got {k!r}")
        self.max_batch = check_count(max_batch, "max_batch", optional=True)
        if memory_budget is not None:
            check_number(memory_budget, "memory_budget", minimum=1)
        self.memory_budget = memory_budget
        self.unique_copies = check_flag(unique_copies, "unique_copies")
        self.input_shape = self._check_shape(input_shape)
        self.backbone = backbone
        self.embedding = embedding
        reference = next((p for p in backbone.parameters() if p.is_floating_point()), None)
        dtype = reference.dtype if reference is not None else torch.get_default_dtype()
        device = reference.device if reference is not None else torch.device("cpu")

        self.kind, self.grid, token_dim = self._layout(dtype, device)
        self.n_patches = math.prod(self.grid)
        if self.n_groups > self.n_heads * self.n_patches:
            raise ValueError(f"n_groups ({self.n_groups}) is larger than the number of candidate groups: "
                             f"{self.n_patches} patches of patch_size {self.patch_size} × {self.n_heads} head(s)")
        self.kept = fraction_count(self.k, self.n_patches, "k")
        self.hidden = self._probe(dtype, device)

        gen = make_generator(generator)
        patch_dim = (self.input_shape[0] if self.kind == "image" else token_dim) * self.patch_size ** len(self.grid)
        # GroupGen: patch embedding, position, query and key projections (one width per head)
        self.patch_proj = _linear(patch_dim, attn_dim, gen, dtype, device)
        self.position = nn.Parameter(0.5 * torch.randn(self.n_patches, attn_dim, generator=gen, dtype=torch.float64
                                                 ).to(dtype=dtype, device=device))
        self.gen_query = _linear(attn_dim, attn_dim * self.n_heads, gen, dtype, device, bias=False)
        self.gen_key = _linear(attn_dim, attn_dim * self.n_heads, gen, dtype, device, bias=False)
        with torch.no_grad():  # queries start equal to keys: a patch attends to itself and to patches like it,
            self.gen_key.weight.copy_(self.gen_query.weight)  # so the candidate groups start distinct
        # GroupSelect: class head C, projected class query and group key
        if head is not None:
            if not isinstance(head, nn.Linear) or head.in_features != self.hidden \
                    or head.out_features != self.num_classes:
                got = (f"Linear({head.in_features}, {head.out_features})" if isinstance(head, nn.Linear)
                       else type(head).__name__)
                raise ValueError(f"head must be an nn.Linear({self.hidden}, {self.num_classes}) from the backbone's "
                                 f"{self.hidden} features to num_classes, got {got}")
            self.head = copy.deepcopy(head).to(dtype=dtype, device=device)
            self.head.requires_grad_(True)
        else:
            self.head = _linear(self.hidden, self.num_classes, gen, dtype, device)
        self.sel_query = _linear(self.hidden, self.hidden, gen, dtype, device)
        self.sel_key = _linear(self.hidden, self.hidden, gen, dtype, device, bias=False)
        for module in (self, self.patch_proj, self.gen_query, self.gen_key, self.head, self.sel_query, self.sel_key):
            module.training = False  # its own layers start in eval mode; the backbone keeps its mode

    # ---------------------------------------------------------------- construction checks
    @staticmethod
    def _check_shape(input_shape) -> tuple:
        try:
            shape = tuple(int(s) for s in input_shape)
        except TypeError:
            raise TypeError(f"input_shape must be a sequence of ints (one example's shape), got {input_shape!r}")
        if not 1 <= len(shape) <= 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W), (T, D) or (T,) with positive sizes, got {input_shape!r}")
        return shape

    def _layout(self, dtype, device) -> tuple[str, tuple, int]:
        """The input kind, the patch grid and the per-token width."""
        p, shape = self.patch_size, self.input_shape
        if len(shape) == 3:
            if self.embedding is not None:
                raise ValueError("embedding is for token ids [B, T]; input_shape (C, H, W) is an image")
            if shape[1] % p or shape[2] % p:
                raise ValueError(f"patch_size {p} must divide the image size {shape[1]}×{shape[2]} "
                                 "(SumOfParts does not pad; crop or resize the images)")
            return "image", (shape[1] // p, shape[2] // p), shape[0]
        if shape[0] % p:
            raise ValueError(f"patch_size {p} must divide the sequence length {shape[0]} (SumOfParts does not pad)")
        if len(shape) == 2:
            if self.embedding is not None:
                raise ValueError("embedding is for token ids [B, T]; input_shape (T, D) is already embedded")
            return "tokens", (shape[0] // p,), shape[1]
        if self.embedding is None:
            return "features", (shape[0] // p,), 1
        ids = torch.arange(shape[0], device=device).remainder(2).expand(2, -1)
        with model_guard(self.embedding, quiet=True), torch.no_grad():
            out = run_model(self.embedding, ids)
        if out.dim() != 3 or tuple(out.shape[:2]) != (2, shape[0]) or not out.is_floating_point():
            raise ValueError(f"embedding must map token ids [B, T] to floating [B, T, D]; got "
                             f"{tuple(out.shape)} {out.dtype} for ids of shape (2, {shape[0]})")
        return "ids", (shape[0] // p,), out.shape[2]

    def _unit_patch(self, x: torch.Tensor) -> torch.Tensor:
        """The patch of each unit of ``x`` seen as ``[B, C, L]`` (:meth:`_units`): pixels (the channels share
        them) or the entries of tokens. Made once per device and token width (it depends on the layout only;
        a plain attribute, not a buffer, so no ``to_empty`` or state dict can leave it stale)."""
        key = (x.device, x.shape[-1])
        cache = self.__dict__.setdefault("_unit_patches", {})
        if key not in cache:
            cache[key] = self._make_unit_patch(x.shape[-1], x.device)
        return cache[key]

    def _make_unit_patch(self, token_dim: int, device) -> torch.Tensor:
        p = self.patch_size
        if self.kind == "image":
            gw, (h, w) = self.grid[1], self.input_shape[1:]
            rows = torch.arange(h, device=device).div(p, rounding_mode="floor")
            cols = torch.arange(w, device=device).div(p, rounding_mode="floor")
            return (rows.view(-1, 1) * gw + cols.view(1, -1)).reshape(-1)
        width = 1 if self.kind == "features" else token_dim
        return torch.arange(self.input_shape[0], device=device).div(p, rounding_mode="floor").repeat_interleave(width)

    def _units(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[B, C, L]``: channels × pixels of an image, one row of all entries otherwise."""
        return x.reshape(x.shape[0], x.shape[1] if self.kind == "image" else 1, -1)

    def _probe(self, dtype, device) -> int:
        """``h``: the width of the backbone's features, from one forward of two inputs."""
        shape = (2,) + self.input_shape
        if self.kind == "ids":
            with model_guard(self.embedding, quiet=True), torch.no_grad():
                probe = self.embedding(torch.arange(self.input_shape[0], device=device).remainder(2).expand(2, -1))
        else:
            probe = torch.linspace(0.0, 1.0, math.prod(shape), dtype=dtype, device=device).reshape(shape)
        try:
            with model_guard(self.backbone, quiet=True), torch.no_grad(), model_errors(probe):
                out = self._backbone(probe)
        except ModelCallError as e:
            raise ValueError(f"backbone could not run inputs of shape {tuple(probe.shape)} (input_shape "
                             f"{self.input_shape}): {e.__cause__ or e}") from e
        try:  # a backbone that runs only without autograd keeps the engine's default factor
            with model_guard(self.backbone, quiet=True):
                self._input_factor = measured_input_factor(self.backbone, probe)
        except Exception:
            self._input_factor = SumOfParts._input_factor
        return out.shape[1]

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features of ``x``, checked to be ``[N, h]``."""
        out = self.backbone(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"backbone must return one tensor of features [B, h]; the model returned a "
                            f"{type(out).__name__}: wrap it, e.g. lambda x: model(x)[0]")
        if out.dim() != 2 or out.shape[0] != x.shape[0] or not out.is_floating_point():
            raise ValueError(f"backbone must return floating features [B, h]; got {tuple(out.shape)} {out.dtype} "
                             f"for {x.shape[0]} inputs of shape {tuple(x.shape[1:])}")
        return out

    # ---------------------------------------------------------------- the model
    def _check_batch(self, inputs: torch.Tensor) -> None:
        """The input contract of :meth:`forward`: ``[B, *input_shape]``, token ids for an ``embedding``."""
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if tuple(inputs.shape[1:]) != self.input_shape or inputs.dim() != len(self.input_shape) + 1:
            raise ValueError(f"inputs must have shape [B, {', '.join(map(str, self.input_shape))}], "
                             f"got {tuple(inputs.shape)}")
        if inputs.shape[0] == 0:
            raise ValueError(f"inputs must have a non-empty batch axis, got shape {tuple(inputs.shape)}")
        if self.kind == "ids" and not is_integer(inputs):
            raise TypeError(f"inputs must be integer token ids for a SumOfParts with an embedding, got {inputs.dtype}")
        if self.kind != "ids" and not inputs.is_floating_point():
            raise TypeError(f"inputs have dtype {inputs.dtype}; this SumOfParts takes floating inputs "
                            "(token ids need an embedding)")
        dtype = self.head.weight.dtype
        if self.kind != "ids" and inputs.dtype != dtype:
            raise TypeError(f"inputs have dtype {inputs.dtype} but the model's parameters are {dtype}; "
                            f"cast one to the other (inputs.to({dtype}) or model.to({inputs.dtype}))")

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, P, patch_dim]`` patch vectors (row-major patches)."""
        b, p = x.shape[0], self.patch_size
        if self.kind == "image":
            c, gh, gw = x.shape[1], *self.grid
            return x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
        return x.reshape(b, self.grid[0], -1)

    def _groups(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GroupGen: ``(mask [B, G, P], hard [B, G, P] bool, first [B, G])`` over patches; ``mask`` is the 0/1
        mask carrying the straight-through gradient of the attention weights when gradients or forward-mode
        tangents are on, and ``hard`` itself otherwise (a product with it gives the same numbers as with its 0/1
        floats).
        Rows are ranked by their max attention, then their max logit; a row's patches by their logit (the
        order of the attention weights, with the zeros of sparsemax ordered too); ties by index
        (:func:`~fastattr.ops.group_gen`: the logits and :func:`~fastattr.ops.group_masks` of them, which also
        gives each group the first with the same patches)."""
        n = self.n_patches
        logits, hard, rows, first = group_gen(patches, self.patch_proj.weight, self.patch_proj.bias, self.position,
                                              self.gen_query.weight, self.gen_key.weight, self.n_groups, self.kept)
        if not (logits.requires_grad or differentiating_transform(logits)):   # forward-mode AD: no requires_grad
            return hard, hard, first
        soft = sparsemax(logits, dim=-1).gather(1, rows.unsqueeze(-1).expand(-1, -1, n))
        scaled = soft / soft.detach().amax(-1, keepdim=True)
        return hard.to(logits.dtype) + (scaled - scaled.detach()), hard, first  # 0/1 forward, attention backward

    def _unit_masks(self, m: torch.Tensor) -> torch.Tensor:
        """Patch masks ``[B, G, P]`` as masks over the masked tensor's units: ``[B, G, H, W]`` pixels or
        ``[B, G, T]`` tokens (one expand of the patch grid, no loop over groups)."""
        b, g, p = m.shape[0], m.shape[1], self.patch_size
        if self.kind == "image":
            gh, gw = self.grid
            return m.view(b, g, gh, 1, gw, 1).expand(b, g, gh, p, gw, p).reshape(b, g, gh * p, gw * p)
        return m.view(b, g, -1, 1).expand(b, g, self.grid[0], p).reshape(b, g, -1)

    def _patch_copies(self, x: torch.Tensor, m: torch.Tensor, rows: torch.Tensor, g: int) -> torch.Tensor:
        """``S_i ⊙ x`` for the groups ``rows`` (flat indices ``b·G + i``, in the order given) of patch masks
        ``m [B·G, P]`` (differentiable in ``m``): each unit of ``x`` (:meth:`_units`) times its patch's mask value,
        one product, as :func:`~fastattr.ops.distinct_copies` computes without gradients;
        ``[len(rows), *x.shape[1:]]``."""
        values = m.index_select(0, rows)[:, self._unit_patch(x)].unsqueeze(1)          # [len(rows), 1, L]
        picked = self._units(x).index_select(0, rows.div(g, rounding_mode="floor")) * values
        return picked.view((-1,) + tuple(x.shape[1:]))

    def _features(self, x: torch.Tensor, m: torch.Tensor, max_batch, memory_budget,
                  groups: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z [N, h], slot [B, G])``: the backbone's features of the copies ``S_i ⊙ x`` of patch masks
        ``m [B, G, P]`` and the row of ``z`` each group reads, from chunks of the engine's chunk iterator
        (step-major, a block of groups for a block of examples; results independent of the chunk size).
        The default chunk holds the backbone's activations measured at construction
        (:func:`~fastattr.core.measured_input_factor`) within the engine's budget, and on CPU at least
        :data:`MIN_DEFAULT_CHUNK` copies (a GPU's budget is free memory, never overridden). Given ``groups``
        (the bool masks and :func:`first_equal_group` of them), without gradients or forward-mode tangents and
        with the backbone in eval mode, groups of one input holding the same patches run once
        (``unique_copies``); otherwise all ``B·G`` copies run (``N = B·G``, ``slot`` the identity)."""
        b, g = m.shape[:2]
        chunk = chunk_size(x, b * g, max_batch, memory_budget, per_input_factor=self._input_factor)
        if max_batch is None and memory_budget is None and x.device.type == "cpu":
            chunk = min(b * g, max(chunk, MIN_DEFAULT_CHUNK))
        if groups is not None and self.unique_copies and not torch.is_grad_enabled() \
                and not any(module.training for module in self.backbone.modules()) \
                and not differentiating_transform(x, m):
            return self._distinct_features(x, *groups, chunk)
        flat = m.reshape(b * g, -1)
        grid = ChunkGrid(b, g, chunk)
        runner = ChunkRunner(self._backbone, grid.rows)
        z = None
        for e0, e1, k0, k1 in grid:
            rows = (torch.arange(k0, k1, device=x.device).unsqueeze(1)
                    + g * torch.arange(e0, e1, device=x.device).unsqueeze(0)).view(-1)   # step-major
            out = runner(self._patch_copies(x, flat, rows, g))
            if z is None:
                z = out.new_empty(b, g, out.shape[1])
            z[e0:e1, k0:k1] = out.view(k1 - k0, e1 - e0, -1).transpose(0, 1)
        return z.view(b * g, -1), torch.arange(b * g, device=z.device).view(b, g)

    def _distinct_features(self, x: torch.Tensor, hard: torch.Tensor, first: torch.Tensor,
                           chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z [N, h], slot [B, G])`` from the backbone on the ``N`` distinct copies only, given the bool masks
        ``hard [B, G, P]`` and ``first [B, G]``: :func:`~fastattr.ops.distinct_copies` of blocks of
        ``max(1, chunk // G)`` inputs (at most ``max(chunk, G)`` copies at a time), the backbone on at most
        ``chunk`` of them a call."""
        b, g = first.shape
        per = max(1, chunk // g)
        runner = ChunkRunner(self._backbone, chunk)
        unit_patch = self._unit_patch(x)
        units, outs, slots, n = self._units(x), [], [], 0
        for e0 in range(0, b, per):
            copies, slot = distinct_copies(units[e0:e0 + per], hard[e0:e0 + per], first[e0:e0 + per], unit_patch)
            outs.extend(runner(piece.view((-1,) + tuple(x.shape[1:]))) for piece in copies.split(chunk))
            slots.append(slot + n if n else slot)
            n += copies.shape[0]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)), (slots[0] if len(slots) == 1 else torch.cat(slots))

    def _select_query(self) -> torch.Tensor:
        """GroupSelect's class queries folded with its key projection, ``(W_q' C) W_k' / √h`` ``[C, h]``: the
        scores ``(W_q' C)(W_k' z)ᵀ / √h`` are this times ``zᵀ``, one product with ``z`` fewer. Made before the
        backbone runs (it depends on the parameters only)."""
        return torch.mm(self.sel_query(self.head.weight), self.sel_key.weight).div_(math.sqrt(self.hidden))

    def _run(self, inputs: torch.Tensor, max_batch=None, memory_budget=None) -> dict:
        self._check_batch(inputs)
        x = self.embedding(inputs) if self.kind == "ids" else inputs
        mask, hard, first = self._groups(self._patches(x))
        query = self._select_query()
        z, slot = self._features(x, mask, self.max_batch if max_batch is None else max_batch,
                                 self.memory_budget if memory_budget is None else memory_budget, (hard, first))
        c, y, logits = group_select(z, slot, self.head.weight, self.head.bias, query)   # GroupSelect
        return {"hard": hard, "c": c, "y": y, "logits": logits}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``y = Σ_i c_i y_i`` ``[B, C]`` of ``inputs [B, *input_shape]``."""
        return self._run(inputs)["logits"]

    def _feature_masks(self, hard: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Group masks over the input's features: pixels ``[B, G, H, W]`` or ``[B, G, *input_shape]``."""
        masks = self._unit_masks(hard)
        if self.kind == "tokens":
            masks = masks.unsqueeze(-1).expand(-1, -1, -1, self.input_shape[1])
        return masks.contiguous()

    @model_entry(model_name="self")
    def explain(self, inputs: torch.Tensor, target: Union[None, int, str, torch.Tensor] = None, *,
                max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> SOPExplanation:
        """The grouped attribution ``{(S_i, c_i)}`` of the prediction (SOP Def. 3, Alg. 1), faithful by
        construction: ``logits[b, t] = Σ_i scores[b, i] · partial_logits[b, i]``.

        ``target``: None (the predicted class), an int, a ``[B]`` tensor, or ``"all"`` (scores and partial
        logits ``[B, G, C]`` for every class). ``max_batch`` / ``memory_budget`` override the module's
        for this call. The model runs in eval mode (restored after), without gradients.

        Returns :class:`SOPExplanation` ``(masks [B, G, *map] bool, scores, partial_logits, logits [B, C],
        target)``, ready for the grouped metrics::

            >>> e = sop.explain(x)
            >>> fastattr.metrics.grouped_insertion(sop, x, e.scores, e.target, groups=e.masks)
        """
        check_inputs(inputs, integer=self.kind == "ids")
        max_batch = check_count(max_batch, "max_batch", optional=True)
        if isinstance(target, str) and target != "all":
            raise ValueError(f"target must be None, an int, a [B] tensor or 'all', got {target!r}")
        with torch.no_grad():
            out = self._run(inputs, max_batch, memory_budget)
        masks = self._feature_masks(out["hard"], inputs)
        scores, partial = out["c"].transpose(1, 2), out["y"]
        if isinstance(target, str):
            return SOPExplanation(masks, scores.contiguous(), partial, out["logits"], None)
        t = resolve_target(self, inputs, target, logits=out["logits"])
        index = t.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
        return SOPExplanation(masks, scores.gather(2, index).squeeze(2), partial.gather(2, index).squeeze(2),
                              out["logits"], t)


# -------------------------------------------------------------------- training
def _batches(data, batch_size: int, generator: torch.Generator, device) -> Iterable:
    """Shuffled ``(inputs, labels)`` batches of a tensor pair, or the batches of an iterable as they come."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        order = torch.randperm(x.shape[0], generator=generator)
        for i in range(0, x.shape[0], batch_size):
            idx = order[i:i + batch_size]
            yield x[idx].to(device), y[idx].to(device)
    else:
        for x, y in data:
            yield x.to(device), y.to(device)


def _check_data(model: SumOfParts, data) -> Optional[int]:
    """The data contract of :func:`train_sop`; the number of examples of a tensor pair (else None)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        model._check_batch(x)
        check_inputs(x, integer=model.kind == "ids")
        if y.dim() != 1 or not is_integer(y) or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels (data[1]) must be a 1-D integer tensor with one class per input "
                             f"({x.shape[0]}), got {tuple(y.shape)} {y.dtype}")
        if y.min() < 0 or y.max() >= model.num_classes:
            raise ValueError(f"labels (data[1]) must lie in 0..{model.num_classes - 1}, "
                             f"got {int(y.min())}..{int(y.max())}")
        return x.shape[0]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError("data must be (inputs, labels) tensors or an iterable of (inputs, labels) batches, "
                        f"got {type(data).__name__}")
    return None


def _progress(total: Optional[int], enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return tqdm(total=total, desc="train_sop", unit=" batch")


def train_sop(model: SumOfParts, data, *, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
              finetune: bool = False, weight_decay: float = 0.0, cosine: bool = True, generator=None,
              progress: bool = False) -> list[float]:
    """Trains a :class:`SumOfParts` in place by cross-entropy on its logits ``y = Σ_i c_i y_i`` (SOP §3,
    App. C.1; SPEC §6) with Adam; returns the mean loss of each epoch.

    GroupGen, GroupSelect and the class head always train. ``finetune=False`` freezes the backbone
    (and embedding): it runs in eval mode with ``requires_grad`` off, gradients still flow through
    it to GroupGen; ``finetune=True`` trains it too (in train mode). ``cosine``: the rate of epoch e is
    ``lr · (1 + cos(π e / epochs)) / 2`` (else ``lr`` throughout). The modules' training flags and
    the parameters' ``requires_grad`` are restored afterwards, even on error; ``data`` is not modified.

    Args:
        data: ``(inputs, labels)`` tensors (shuffled each epoch from ``generator``, ``batch_size`` per
            step), or an iterable of ``(inputs, labels)`` batches, iterated once per epoch.
        generator: int seed or ``torch.Generator``: the shuffling, and the seed of every other draw
            (dropout) inside, so the same seed gives the same weights.
        progress: a tqdm bar over the batches.

    Example::

        >>> losses = fastattr.train_sop(sop, fastattr.zoo.load_digits("train"), epochs=5, generator=0)
    """
    if not isinstance(model, SumOfParts):
        raise TypeError(f"model must be a fastattr.SumOfParts, got {type(model).__name__}")
    epochs = check_count(epochs, "epochs")
    batch_size = check_count(batch_size, "batch_size")
    lr = check_number(lr, "lr")
    weight_decay = check_number(weight_decay, "weight_decay")
    finetune = check_flag(finetune, "finetune")
    cosine = check_flag(cosine, "cosine")
    check_flag(progress, "progress")
    n = _check_data(model, data)
    gen = make_generator(generator)
    device = model.head.weight.device
    frozen = [] if finetune else [m for m in (model.backbone, model.embedding) if m is not None]
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    total_steps = None if n is None else epochs * -(-n // batch_size)
    if total_steps is None and hasattr(data, "__len__"):
        total_steps = epochs * len(data)
    bar = _progress(total_steps, progress)
    losses = []
    seed = int(torch.randint(2 ** 62, (1,), generator=gen))
    params = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            model.train()
            for m in frozen:
                m.eval()
                m.requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
            for epoch in range(epochs):
                for group in opt.param_groups:
                    group["lr"] = lr * (1 + math.cos(math.pi * epoch / epochs)) / 2 if cosine else lr
                total, count = 0.0, 0
                for x, y in _batches(data, batch_size, gen, device):
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, count = total + loss.item() * x.shape[0], count + x.shape[0]
                    if bar is not None:
                        bar.update(1)
                if count == 0:
                    raise ValueError("data holds no batch")
                losses.append(total / count)
    finally:
        for p in params:
            p.grad = None
        for m, flag in flags:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
    return losses
