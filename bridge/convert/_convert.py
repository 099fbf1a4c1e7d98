"""Chain + rules -> torch modules and state dicts, and back to Flax; every direction uses the same rules."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from .._errors import InvalidArgumentError, LayerMismatchError, UnsupportedModelError, at_layer
from .._flax_model import is_nnx
from .._tensors import channels_first_flatten_permutation, shared_tensor, to_numpy, to_tensor
from .._validate import require_variables
from ..capture import Step, Variables, chain_or_none, discover_chain
from ..rules import LayerRule, ParamMap, rule_for_flax, rule_for_torch


class PlannedStep(NamedTuple):
    """A step of the chain with the rule that converts it."""

    step: Step
    rule: LayerRule


def plan(
    model: Any, variables: Variables | None = None, steps: tuple[Step, ...] | None = None
) -> tuple[PlannedStep, ...]:
    """Discover the chain of ``model`` (unless its ``steps`` are given) and pick a rule for each step (raises
    before converting anything)."""
    found = discover_chain(model, variables) if steps is None else steps
    return tuple(PlannedStep(step, rule_for_flax(step.layer, step.where)) for step in found)


def _is_state_dict(value: Any) -> bool:
    """A flat mapping of tensors or arrays (what ``state_dict()`` returns), not a tree of Flax variables."""
    return isinstance(value, Mapping) and bool(value) and all(hasattr(v, "shape") for v in value.values())


def to_state_dict(model: Any, variables: Variables | None = None) -> dict[str, torch.Tensor]:
    """The torch state dict of ``model``'s parameters, keys ``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...

    Arguments:
        model: a Flax model that is (or returns) one ``nn.Sequential``, or an ``nnx.Sequential``.
        variables: what ``model.init`` returned (None for NNX). It is not modified.

    Returns:
        New contiguous tensors (copies) on the CPU, laid out for torch: a Dense kernel ``(in, out)`` becomes a
        weight ``(out, in)``, as ``to_torch`` holds them.

    Raises:
        BridgeError: when the model is not a chain, a layer has no rule, or its variables do not fit it.
    """
    return {key: tensor.cpu() for key, tensor in _torch_tensors(plan(model, variables), copy=True).items()}


def to_torch(
    model: Any,
    variables: Variables | None = None,
    inputs: Any = None,
    *,
    copy: bool = True,
    channels_last: bool = True,
) -> torch.nn.Module:
    """A torch module computing what ``model`` computes with ``variables``.

    A model that is one chain (an ``nn.Sequential``) becomes a ``torch.nn.Sequential`` (same positions).
    Any other linen model needs example ``inputs`` (an array, a tuple of positional arguments or a dict of
    keyword arguments, as for ``apply``) and becomes a ``torch.fx.GraphModule`` that takes the same inputs
    in the same layout: layers with a rule are torch layers at their Flax path (``Block_0.Dense_1`` is a
    ``torch.nn.Linear``), the JAX operations between them torch calls (``print(module.code)``).

    Arguments:
        channels_last: True (default): the torch model takes the Flax model's input as it is (convolutions
            on ``(N, H, W, C)``), so both run on the same array. False: a channels-first model, as torch
            users write them: the layers before the flatten take ``(N, C, H, W)`` (``(N, C, L)`` in 1-D)
            and ``bridge.flatten`` becomes ``ChannelsFirstFlatten``, which flattens in Flax's order so the
            Dense weights after it are unchanged. Feed it ``x.transpose(0, 3, 1, 2)``, and check it with
            ``check_equivalence(..., channels_last=False)``. Conv, flatten and elementwise layers have a
            channels-first form; other layers before the flatten raise ``UnsupportedModelError``.
        copy: True (default): each tensor is a new contiguous tensor in torch's layout (a Linear weight
            ``(out, in)``, a convolution ``(out, in, *spatial)``), made by one transposing copy from the
            Flax buffer: an ordinary torch module, ready for ``safetensors.torch.save_file``. False: no
            copy at all: each weight is a DLPack view of the Flax buffer, so the two frameworks share
            memory; the layout change is then a view (strides ``(1, out)`` for a Linear weight), which
            is not contiguous: ``safetensors`` refuses to save it and some kernels copy it on each call
            (``.contiguous()`` it, or convert with copy=True, before saving). Writing to the torch weight
            changes the JAX array, which JAX assumes immutable; a donated or deleted JAX buffer
            invalidates it. A read-only NumPy buffer cannot be shared (refused). Dtypes never change.
            A GraphModule always holds copies.

    Raises:
        UnsupportedModelError: for a model that is not a chain when ``inputs`` are not given, or a JAX
            operation with no torch translation (the message names it and the Flax module).
        BridgeError: when a layer has no rule, or its variables do not fit it.
    """
    require_variables(variables)
    steps = chain_or_none(model, variables) if inputs is not None else None
    if inputs is not None and steps is None:
        from ._native import native_module

        if variables is None and not is_nnx(model):
            raise InvalidArgumentError("to_torch of a linen model needs its variables (what model.init returns)")
        return native_module(model, variables, inputs)
    try:
        planned = plan(model, variables, steps)
    except UnsupportedModelError as e:
        if inputs is None and not is_nnx(model):
            raise UnsupportedModelError(
                f"{e}; to convert any other model, pass example inputs: to_torch(model, variables, x)"
            ) from e
        raise
    return _build_torch(planned, _torch_tensors(planned, copy=copy), channels_last=channels_last)


def torch_module_for(
    model: Any, variables: Variables | None, state_dict: Mapping[str, torch.Tensor]
) -> torch.nn.Sequential:
    """The torch Sequential the rules build for ``model``, holding the tensors of ``state_dict`` (not
    ``variables``, which only give the layers' shapes): how a converted checkpoint is checked against its source."""
    return _build_torch(plan(model, variables), dict(state_dict))


def _build_torch(
    planned: tuple[PlannedStep, ...], state: dict[str, torch.Tensor], *, channels_last: bool = True
) -> torch.nn.Sequential:
    spatial = len(planned) if channels_last else channels_first_positions([step for step, _ in planned])
    modules = []
    for step, rule in planned:
        try:
            if step.index < spatial and not channels_last:
                modules.append(rule.make_torch_channels_first(step.layer, step.variables))
            else:
                modules.append(rule.make_torch(step.layer, step.variables))
        except (LayerMismatchError, UnsupportedModelError) as e:
            raise type(e)(f"{step.where}: {e}") from e
    sequential = torch.nn.Sequential(*modules)
    _load(sequential, planned, state)
    return sequential.eval()


def channels_first_positions(steps: Sequence[Step]) -> int:
    """How many positions of a channels-first model take ``(N, C, spatial...)``: those up to the first
    flatten, which is one of them (its input is channels-first, its output flat); every one without a flatten."""
    return next((step.index + 1 for step in steps if step.kind == "flatten"), len(steps))


def flatten_permutations(planned: Sequence[PlannedStep], torch_module: torch.nn.Sequential) -> dict[int, np.ndarray]:
    """For a channels-first port whose flatten flattens ``(C, H, W)`` (torch's order): the position after
    it and the permutation of its input features (``channels_first_flatten_permutation``); found before any
    values exist, by probing the port's flatten (the checker finds it from the recorded values instead)."""
    steps = [step for step, _ in planned]
    flatten = channels_first_positions(steps) - 1
    if flatten + 1 >= len(steps) or steps[flatten].kind != "flatten":
        return {}
    channels = next(
        (
            int(np.shape(s.variables["params"]["kernel"])[-1])
            for s in reversed(steps[:flatten])
            if "kernel" in s.variables.get("params", {})
        ),
        None,
    )
    dense = planned[flatten + 1]
    kernel = dense.step.variables.get("params", {}).get("kernel")
    if channels is None or kernel is None or np.ndim(kernel) != 2 or np.shape(kernel)[0] % channels:
        return {}
    positions = np.shape(kernel)[0] // channels
    probe = torch.arange(channels * positions, dtype=torch.float64).reshape(1, channels, positions)
    with torch.no_grad():
        try:
            flattened = torch_module[flatten](probe)
        except RuntimeError:
            return {}
    if not torch.equal(flattened, probe.reshape(1, -1)) or channels == 1 or positions == 1:
        return {}  # Flax's order already (ChannelsFirstFlatten), or nothing to permute
    return {flatten + 1: channels_first_flatten_permutation(channels, positions)}


def from_state_dict(model: Any, variables: Any = None, state_dict: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Flax variables for ``model`` from a torch state dict (keys ``"0.weight"``...), the inverse of ``to_state_dict``.

    Arguments:
        model: the Flax model the weights belong to.
        variables: variables of the model giving its tree (``model.init``, or ``jax.eval_shape`` of it
            to avoid allocating); None for NNX. ``to_state_dict(model, variables)``'s order; the order before
            0.2, ``from_state_dict(model, state_dict, variables)``, still works with a ``DeprecationWarning``.
        state_dict: tensors (or arrays) laid out for torch.

    Returns:
        Nested dicts of NumPy arrays in the model's tree (``{"params": {"Dense_0": {"kernel": ...}}}``).

    Raises:
        LayerMismatchError: naming the layer and key of every missing, unexpected or mis-shaped tensor.
    """
    if _is_state_dict(variables) and not _is_state_dict(state_dict):  # the order before 0.2
        warnings.warn(
            "from_state_dict(model, state_dict, variables) is deprecated: call from_state_dict(model, variables, "
            "state_dict), the order of to_state_dict",
            DeprecationWarning,
            stacklevel=2,
        )
        variables, state_dict = state_dict, variables
    if not isinstance(state_dict, Mapping):
        raise InvalidArgumentError(
            "state_dict must be a mapping of torch names to tensors (what module.state_dict() returns), got "
            + type(state_dict).__name__
        )
    require_variables(variables)
    planned = plan(model, variables)
    result: dict[str, Any] = {}
    problems: list[str] = []
    used: set[str] = set()
    for step, rule in planned:
        for m in rule.param_maps(step.layer, step.variables):
            key = f"{step.index}.{m.torch_name}"
            if key not in state_dict:
                problems.append(f"{step.where}: missing {key}")
                continue
            used.add(key)
            value = state_dict[key]
            array = m.torch_to_flax(to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value))
            expected = tuple(step.variables[m.collection][m.flax_name].shape)
            if array.shape != expected:
                problems.append(
                    f"{step.where}: {key} gives shape {array.shape} for {m.flax_name}, the model has {expected}"
                )
                continue
            node = result.setdefault(m.collection, {})
            for part in step.flax_path:
                node = node.setdefault(part, {})
            node[m.flax_name] = np.ascontiguousarray(array)
    problems += [f"unexpected {key}" for key in sorted(set(state_dict) - used) if not _torch_only(planned, key)]
    if problems:
        raise LayerMismatchError("the state dict does not fit the model: " + "; ".join(problems))
    return result


def to_flax(torch_sequential: torch.nn.Module) -> tuple[nn.Sequential, dict[str, Any]]:
    """The Flax ``nn.Sequential`` and its variables equivalent to a ``torch.nn.Sequential``.

    Returns:
        ``(model, variables)``: layers named ``layers_0``, ``layers_2``, ... as Flax names a
        Sequential used as the model; weights ``(out, in)`` become kernels ``(in, out)``.

    Raises:
        UnsupportedModelError: when the module is not a ``torch.nn.Sequential``.
        UnknownLayerError: naming the position of a torch module with no rule.
        LayerMismatchError: when a module holds tensors its rule does not account for, or a dtype JAX
            would silently change (float64 without ``jax_enable_x64``).
    """
    layers = []
    variables: dict[str, dict[str, Any]] = {}
    for index, module, rule, values in _torch_layers(torch_sequential):
        layers.append(rule.make_flax(module))
        for m, value in values:
            variables.setdefault(m.collection, {}).setdefault(f"layers_{index}", {})[m.flax_name] = value
    return nn.Sequential(layers), variables


def to_nnx(torch_sequential: torch.nn.Module, rngs: nnx.Rngs | None = None) -> nnx.Sequential:
    """The Flax NNX ``nnx.Sequential`` equivalent to a ``torch.nn.Sequential``, holding its weights.

    Dropout and BatchNorm come in inference mode (``deterministic=True``, ``use_running_average=True``).
    ``rngs`` only seeds the layers' initialisers, whose values are then replaced.

    Raises:
        The errors of ``to_flax``.
    """
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    layers = []
    for _, module, rule, values in _torch_layers(torch_sequential):
        layer = rule.make_nnx(module, rngs)
        for m, value in values:
            getattr(layer, m.flax_name)[...] = value
        layers.append(layer)
    return nnx.Sequential(*layers)


def _torch_layers(
    torch_sequential: torch.nn.Module,
) -> list[tuple[int, torch.nn.Module, LayerRule, list[tuple[ParamMap, Any]]]]:
    """Each torch layer with its rule and its tensors laid out for Flax, checked before anything is built."""
    if not isinstance(torch_sequential, torch.nn.Sequential):
        raise UnsupportedModelError(
            f"to_flax converts a torch.nn.Sequential, got {type(torch_sequential).__name__}; "
            "wrap the layers in torch.nn.Sequential"
        )
    layers = []
    for index, module in enumerate(torch_sequential):
        where = at_layer(index, str(index), f"torch {type(module).__name__}")
        rule = rule_for_torch(module, where)
        maps = rule.torch_param_maps(module)
        state = {key: value for key, value in module.state_dict().items() if key not in rule.torch_only_keys}
        problems = _key_problems(
            expected={m.torch_name for m in maps}, found=set(state), expected_side="rule", found_side="module"
        )
        if problems:
            raise LayerMismatchError(f"{where}: " + "; ".join(problems))
        values = [(m, _to_jax(m.torch_to_flax(to_numpy(state[m.torch_name])), f"{where} {m.torch_name}")) for m in maps]
        layers.append((index, module, rule, values))
    return layers


def _torch_only(planned: tuple[PlannedStep, ...], key: str) -> bool:
    """Whether a torch state-dict key is one its rule leaves to torch (``3.num_batches_tracked``)."""
    position, _, name = key.partition(".")
    if not (position.isdigit() and int(position) < len(planned)):
        return False
    step, rule = planned[int(position)]
    return name in rule.torch_only_keys or name in rule.torch_constants(step.layer, step.variables)


def _load(module: torch.nn.Module, planned: tuple[PlannedStep, ...], state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` layer by layer (torch's whole-model call is quadratic in the number of
    layers), strict about every key but those the rules leave to torch."""
    by_position: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        position, _, name = key.partition(".")
        by_position.setdefault(position, {})[name] = tensor
    if unexpected := sorted(set(by_position) - {str(i) for i in range(len(planned))}):
        raise LayerMismatchError(f"state dict mismatch: unexpected positions {unexpected}")
    for (step, rule), child in zip(planned, module.children(), strict=True):
        try:  # a user rule that leaves a tensor unfilled, a variable of another shape: named by layer
            rule.load_torch(child, step.layer, step.variables, by_position.get(str(step.index), {}), assign=True)
        except LayerMismatchError as e:
            raise LayerMismatchError(f"{step.where}: {e}") from e


def _torch_tensors(planned: tuple[PlannedStep, ...], *, copy: bool) -> dict[str, torch.Tensor]:
    """Each step's variables as torch tensors laid out for torch, keyed ``"<position>.<torch name>"``."""
    tensors: dict[str, torch.Tensor] = {}
    for step, rule in planned:
        maps = rule.param_maps(step.layer, step.variables)
        check_variable_names(step, maps)
        for m in maps:
            source = step.variables[m.collection][m.flax_name]
            if m.to_torch_axes is not None and np.ndim(source) != len(m.to_torch_axes):
                raise LayerMismatchError(
                    f"{step.where}: {m.flax_name} has shape {tuple(np.shape(source))}, where a {step.kind} holds "
                    f"one of rank {len(m.to_torch_axes)}: pass the variables model.init gives this model"
                )
            if copy:
                tensor = _contiguous_copy(source, m)
            else:
                tensor = shared_tensor(source, f"{step.where} {m.flax_name}")
                tensor = tensor if m.to_torch_axes is None else tensor.permute(m.to_torch_axes)
            tensors[f"{step.index}.{m.torch_name}"] = tensor
    return tensors


def _contiguous_copy(source: Any, m: ParamMap) -> torch.Tensor:
    """A new contiguous tensor in torch's layout: one (transposing) copy straight from the JAX buffer,
    as torch's own ``w.t().contiguous()`` would make; NumPy sources are copied by NumPy the same way."""
    if isinstance(source, jax.Array) and source.is_fully_addressable:
        view = torch.utils.dlpack.from_dlpack(source)
        view = view if m.to_torch_axes is None else view.permute(m.to_torch_axes)
        return view.clone(memory_format=torch.contiguous_format)
    return to_tensor(m.flax_to_torch(np.asarray(source)))


def check_variable_names(step: Step, maps: tuple[ParamMap, ...]) -> None:
    """Refuse a step whose variables are not exactly the ones its rule converts, naming what is missing or extra."""
    expected = {f"{m.collection}/{m.flax_name}" for m in maps}
    found = {f"{collection}/{name}" for collection, names in step.variables.items() for name in names}
    problems = _key_problems(expected=expected, found=found, expected_side="rule", found_side="variables")
    if problems:
        raise LayerMismatchError(f"{step.where}: " + "; ".join(problems))


def _key_problems(*, expected: set[str], found: set[str], expected_side: str, found_side: str) -> list[str]:
    """Missing and unexpected keys, sorted, as message parts (empty when the sets agree)."""
    problems = []
    if missing := sorted(expected - found):
        problems.append(f"missing in {found_side}: {', '.join(missing)}")
    if unexpected := sorted(found - expected):
        problems.append(f"unexpected in {found_side} (not in {expected_side}): {', '.join(unexpected)}")
    return problems


def _to_jax(array: np.ndarray, what: str) -> Any:
    value = jnp.asarray(array)
    if value.dtype != array.dtype:
        raise LayerMismatchError(
            f"{what}: JAX would store {array.dtype} as {value.dtype}; "
            "enable 64-bit JAX (jax.config.update('jax_enable_x64', True)) or cast the torch module first"
        )
    return value
