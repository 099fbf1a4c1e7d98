"""Which tensor of a torch port holds each Flax variable of a layer: by the module that owns it, never by
a global name.

A port's position may be the rule's own torch module (``Linear``: ``weight``/``bias``), a wrapper around
it (``0.inner.weight``), or a module of its own with its own names (``w``/``b``). The Flax variable
laid out for torch is looked for in that position's subtree: first in a submodule of the rule's torch
type under the rule's name; then, where the values are known (checking a loaded port), the one tensor
holding exactly those values; then the one tensor of that shape and dtype nobody else claimed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from .._tensors import to_numpy, torch_dtype
from ..rules import LayerRule, ParamMap


class Owned(NamedTuple):
    """A Flax variable of one layer and the port tensor that holds it (``torch_name`` relative to the
    position's module, ``""`` when none does)."""

    param_map: ParamMap
    torch_name: str
    tensor: torch.Tensor | None


def port_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of ``module``'s subtree, by its name relative to ``module``."""
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update({name: buffer for name, buffer in module.state_dict(keep_vars=True).items() if name not in tensors})
    return tensors


def owned_tensors(
    rule: LayerRule,
    layer: Any,
    variables: Mapping[str, Mapping[str, Any]],
    module: torch.nn.Module,
    *,
    by_value: bool,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> list[Owned]:
    """The port tensor holding each of the layer's Flax variables (see the module docstring).

    ``by_value``: also match a tensor whose values equal the variable's (a port already loaded).
    ``tensors``: ``port_tensors(module)`` where the caller has them already.
    """
    tensors = port_tensors(module) if tensors is None else tensors
    claimed: set[str] = set()
    result: list[Owned] = []
    maps = rule.param_maps(layer, variables)
    pending: list[ParamMap] = []
    prefix = _rule_submodule(rule, module)
    for m in maps:
        name = f"{prefix}{m.torch_name}" if prefix is not None else None
        if name is not None and name in tensors and name not in claimed:
            claimed.add(name)
            result.append(Owned(m, name, tensors[name]))
        else:
            pending.append(m)
    for m in list(pending):
        expected = m.flax_to_torch(np.asarray(variables[m.collection][m.flax_name]))
        candidates = [
            name
            for name, tensor in tensors.items()
            if name not in claimed
            and tuple(tensor.shape) == expected.shape
            and tensor.dtype == torch_dtype(expected.dtype)
            and tensor.device.type != "meta"
        ]
        if by_value:
            equal = [name for name in candidates if np.array_equal(to_numpy(tensors[name]), expected)]
            if len(equal) == 1:
                candidates = equal
        if len(candidates) == 1:
            claimed.add(candidates[0])
            result.append(Owned(m, candidates[0], tensors[candidates[0]]))
        else:
            result.append(Owned(m, "", None))
    order = {m: i for i, m in enumerate(maps)}
    return sorted(result, key=lambda owned: order[owned.param_map])


def tensor_holders(
    rule: LayerRule,
    layer: Any,
    variables: Mapping[str, Mapping[str, Any]],
    module: torch.nn.Module,
    names: Iterable[str],
    *,
    by_value: bool,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, tuple[str, torch.Tensor]]:
    """The port tensor holding each of the rule's torch tensors ``names`` (what ``rule.torch_arrays`` lays
    out): ``(its name in module, tensor)`` found as ``owned_tensors`` finds it, else under the rule's own name
    (packed tensors such as attention's ``in_proj_weight``); a name no tensor holds is left out. ``tensors``:
    ``port_tensors(module)`` where the caller has them already."""
    tensors = port_tensors(module) if tensors is None else tensors
    held = {
        owned.param_map.torch_name: (owned.torch_name, owned.tensor)
        for owned in owned_tensors(rule, layer, variables, module, by_value=by_value, tensors=tensors)
        if owned.tensor is not None
    }
    for name in names:
        if name not in held and name in tensors:
            held[name] = (name, tensors[name])
    return held


def _rule_submodule(rule: LayerRule, module: torch.nn.Module) -> str | None:
    """The name prefix of the one submodule of ``module`` (itself included) of the rule's torch types."""
    found = [name for name, sub in module.named_modules() if type(sub) in rule.torch_types]
    if len(found) != 1:
        return None
    return f"{found[0]}." if found[0] else ""


def unaccounted_tensors(
    rule: LayerRule,
    layer: Any,
    variables: Mapping[str, Mapping[str, Any]],
    tensors: Mapping[str, Any],
    held: Iterable[str],
) -> list[str]:
    """The names among ``tensors`` (a matched port module's, ``port_tensors``) that no Flax variable fills: not
    ``held`` (``tensor_holders``' names), nor a constant of the rule (a LayerNorm's weight of ones), nor an entry
    it leaves to torch (BatchNorm's counter); sorted."""
    accounted = set(held)
    left_to_torch = (*rule.torch_only_keys, *rule.torch_constants(layer, variables))
    return sorted(n for n in tensors if n not in accounted and n.rsplit(".", 1)[-1] not in left_to_torch)
