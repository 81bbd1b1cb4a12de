"""Source transformations for export: swap modules for a target's form of them while a model is traced.

The model is defined once; an exporter that needs another form of a layer (a quantized linear as one custom-op
node, an RMSNorm as ops its delegate takes) swaps those modules in place, traces, and gets the originals back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import nn


@contextlib.contextmanager
def swapped_modules(model: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> Iterator[int]:
    """Replace every submodule for which `replace` returns a module; restore them on exit. Yields the count."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = replace(child)
            if new is not None:
                setattr(parent, name, new)
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


@contextlib.contextmanager
def swapped_attributes(model: nn.Module, kind: type, name: str, value: object) -> Iterator[int]:
    """Set attribute `name` to `value` on every submodule of type `kind`; restore the old values on exit."""
    modules = [m for m in model.modules() if type(m) is kind]
    old = [getattr(m, name) for m in modules]
    for module in modules:
        setattr(module, name, value)
    try:
        yield len(modules)
    finally:
        for module, previous in zip(modules, old, strict=True):
            setattr(module, name, previous)
