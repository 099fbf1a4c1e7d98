"""Where each tensor of a Hugging Face Flax checkpoint goes in the PyTorch model, decided before any is read.

The Flax model is traced abstractly (``jax.eval_shape`` of its ``init_weights``, under ``nn.intercept_methods``)
to learn the layer at each path; a layer with a rule (Dense, Conv, LayerNorm, Embed, BatchNorm, ...) maps its
variables by the rule's ``param_maps``, the same rule that ``to_torch`` and ``load_into`` use. A variable of a
module without a rule (GPT-2's ``FlaxConv1D``, a bare ``self.param``) maps by Hugging Face's naming
convention: ``kernel``/``scale``/``embedding`` become ``weight`` (a 2-D kernel transposed), ``mean``/``var``
``running_mean``/``running_var``. Every key and shape is then checked against the PyTorch class built on
the meta device (no memory): each Flax tensor lands in exactly one torch tensor, and every torch tensor is
filled, tied to one that is, or a counter torch alone has; anything else is refused with its name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import torch
from flax.traverse_util import flatten_dict

from .._errors import UnsupportedModelError
from ..rules import registered_rules, rule_or_none

_COLLECTIONS = {"params", "batch_stats", "cache", "intermediates"}
_BY_NAME = {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean", "var": "running_var"}
_KERNEL_AXES = {2: (1, 0), 3: (2, 1, 0), 4: (3, 2, 0, 1)}  # (in, out) / (W, in, out) / (H, W, in, out) -> torch


@dataclass(frozen=True)
class TensorPlan:
    """One Flax tensor: its torch key, the permutation into torch's layout, the torch shape, and which rule says so."""

    torch_key: str
    axes: tuple[int, ...] | None
    shape: tuple[int, ...]
    how: str  # a rule's kind ("Dense"), or "by name" for a module without a rule


@dataclass(frozen=True)
class ConversionPlan:
    """Every tensor of the checkpoint (by its flat Flax key), and what the torch model gets otherwise."""

    tensors: dict[str, TensorPlan]
    zeros: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)  # torch-only counters
    tied: dict[str, str] = field(default_factory=dict)  # torch key -> the written key it shares storage with

    def by_name(self) -> list[str]:
        """The Flax keys placed by Hugging Face's naming convention (no rule): the check confirms them."""
        return [key for key, tensor in self.tensors.items() if tensor.how == "by name"]


def flax_layout(flax_model: Any) -> tuple[dict[tuple[str, ...], Any], dict[str, jax.ShapeDtypeStruct], bool]:
    """``(layers by module path, checkpoint leaves by flat key, keyed by collection)`` of a ``FlaxPreTrainedModel``
    (built with ``_do_init=False``: nothing is allocated)."""
    layers: dict[tuple[str, ...], Any] = {}

    def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        layers.setdefault(tuple(context.module.path), context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(lambda: flax_model.init_weights(jax.random.PRNGKey(0), flax_model.input_shape))
    shapes = dict(shapes)
    keyed = "params" in shapes and set(shapes) <= _COLLECTIONS  # ResNet's checkpoint: {params, batch_stats}
    leaves = {"/".join(path): leaf for path, leaf in flatten_dict(shapes).items()}
    return layers, leaves, keyed


def plan_conversion(
    layers: Mapping[tuple[str, ...], Any],
    leaves: Mapping[str, jax.ShapeDtypeStruct],
    keyed: bool,
    torch_model: torch.nn.Module,
) -> ConversionPlan:
    """Map every Flax leaf onto ``torch_model``'s state dict (a model on the meta device will do).

    Raises:
        UnsupportedModelError: naming each Flax tensor with no torch place, or a wrong shape, and each torch
            tensor nothing fills.
    """
    state = torch_model.state_dict(keep_vars=True)
    prefix = getattr(torch_model, "base_model_prefix", "")
    by_module: dict[tuple[str, ...], dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for key, leaf in leaves.items():
        collection, module_path, name = _split(key, keyed)
        by_module[module_path][collection][name] = leaf
    tensors: dict[str, TensorPlan] = {}
    problems: list[str] = []
    taken: dict[str, str] = {}
    for key, leaf in leaves.items():
        collection, module_path, name = _split(key, keyed)
        torch_name, axes, how = _place(layers.get(module_path), by_module[module_path], collection, name, leaf.ndim)
        wanted = ".".join((*module_path, torch_name))
        torch_key = _resolve(wanted, state, prefix)
        if torch_key is None:
            problems.append(f"Flax {key} ({how}) goes to torch {wanted}, which {type(torch_model).__name__} lacks")
            continue
        shape = tuple(leaf.shape) if axes is None else tuple(leaf.shape[a] for a in axes)
        if shape != tuple(state[torch_key].shape):
            problems.append(
                f"Flax {key} laid out for torch is {shape}, torch {torch_key} is {tuple(state[torch_key].shape)}"
            )
        if torch_key in taken:
            problems.append(f"Flax {taken[torch_key]} and {key} both go to torch {torch_key}")
        taken[torch_key] = key
        tensors[key] = TensorPlan(torch_key, axes, shape, how)
    zeros, tied = _unfilled(torch_model, state, set(taken), problems)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UnsupportedModelError(f"cannot place the checkpoint in {type(torch_model).__name__}: {shown}")
    return ConversionPlan(tensors, zeros, tied)


def _split(key: str, keyed: bool) -> tuple[str, tuple[str, ...], str]:
    parts = tuple(key.split("/"))
    collection, rest = (parts[0], parts[1:]) if keyed else ("params", parts)
    return collection, rest[:-1], rest[-1]


def _place(
    layer: Any, variables: Mapping[str, Mapping[str, Any]], collection: str, name: str, ndim: int
) -> tuple[str, tuple[int, ...] | None, str]:
    """``(torch name, axes, how)`` of one variable: by its layer's rule, else by the naming convention."""
    rule = None if layer is None else rule_or_none(layer)
    if rule is not None:
        for param in rule.param_maps(layer, variables):
            if (param.collection, param.flax_name) == (collection, name):
                return param.torch_name, param.to_torch_axes, rule.kind
    axes = _KERNEL_AXES.get(ndim) if name == "kernel" else None
    return _BY_NAME.get(name, name), axes, "by name"


def _resolve(wanted: str, state: Mapping[str, Any], prefix: str) -> str | None:
    """The torch key for ``wanted``: itself, with or without the base model's prefix (a head checkpoint into a
    base model and back), or a ``weight_norm`` parametrisation (``conv.weight_g`` ->
    ``conv.parametrizations.weight.original0``)."""
    candidates = [wanted]
    if prefix:
        candidates += [f"{prefix}.{wanted}", wanted.removeprefix(f"{prefix}.")]
    parent, _, leaf = wanted.rpartition(".")
    if leaf.endswith(("_g", "_v")):
        original = "original0" if leaf.endswith("_g") else "original1"
        candidates.append(f"{parent}.parametrizations.{leaf[:-2]}.{original}".lstrip("."))
    return next((c for c in candidates if c in state), None)


def _unfilled(
    torch_model: torch.nn.Module, state: Mapping[str, Any], written: set[str], problems: list[str]
) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], dict[str, str]]:
    """Torch tensors no Flax tensor fills: tied to a written one (same tensor object), a buffer named as a rule's
    torch-only key (BatchNorm's ``num_batches_tracked``: zeros), or a problem."""
    groups: dict[int, list[str]] = defaultdict(list)
    for key, tensor in state.items():
        groups[id(tensor)].append(key)
    counters = {key for rule in registered_rules() for key in rule.torch_only_keys}  # BatchNorm's, any BatchNorm
    zeros: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    tied: dict[str, str] = {}
    for key, tensor in state.items():
        if key in written:
            continue
        partner = next((k for k in groups[id(tensor)] if k in written), None)
        if partner is not None:
            tied[key] = partner
            continue
        if key.rpartition(".")[2] in counters and not isinstance(tensor, torch.nn.Parameter):
            zeros[key] = (tuple(tensor.shape), tensor.dtype)
            continue
        problems.append(f"torch {key} {tuple(tensor.shape)} is filled by no Flax tensor")
    return zeros, tied


def permuted(array: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    """``array`` in torch's layout, as a new contiguous array (one layer at a time is all the memory it takes)."""
    return np.require(array if axes is None else np.transpose(array, axes), requirements=("C", "W"))
