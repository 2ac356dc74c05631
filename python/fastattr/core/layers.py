"""Layers named by the caller: a module, a dotted name in the model, a list of those, or None."""
from __future__ import annotations

from typing import Sequence, Union

from torch import nn

Layer = Union[None, str, nn.Module, Sequence[Union[str, nn.Module]]]


def hidden_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Quantus's default representation layers (``PyTorchModel.get_hidden_representations``): every
    ``(name, module)`` of ``model.named_modules()`` that is neither an ``nn.Sequential`` nor of the
    model's own class."""
    return [(n, m) for n, m in model.named_modules() if not isinstance(m, (type(model), nn.Sequential))]


def resolve_layers(model, layer: Layer) -> list[nn.Module]:
    """The modules whose outputs make ``L``: ``layer`` as a module, a name in ``model``, a list of
    those, or None (:func:`hidden_layers`)."""
    if layer is None:
        if not isinstance(model, nn.Module):
            raise TypeError("layer=None takes every layer of an nn.Module model; for a model given as a "
                            f"{type(model).__name__}, pass layer= the module(s) to read")
        found = [m for _, m in hidden_layers(model)]
        if not found:
            raise ValueError("layer=None found no submodule of the model to read a representation from; "
                             "pass layer= a module")
        return found
    items = [layer] if isinstance(layer, (str, nn.Module)) else layer
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"layer must be a module, a module name, a non-empty list of those or None, got {layer!r}")
    out = []
    for item in items:
        if isinstance(item, nn.Module):
            out.append(item)
        elif isinstance(item, str):
            if not isinstance(model, nn.Module):
                raise TypeError(f"layer {item!r} is a name, which needs model to be an nn.Module; pass the module")
            try:
                out.append(model.get_submodule(item))
            except AttributeError:
                names = [n for n, _ in model.named_modules() if n]
                raise ValueError(f"layer {item!r} is not a module of the model; its modules are "
                                 f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}") from None
        else:
            raise TypeError(f"layer entries must be modules or module names, got {type(item).__name__}")
    return out
