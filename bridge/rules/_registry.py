"""The rule registry: one rule per layer kind, keyed by type (or, for functions, by the function).

A rule describes a layer kind once and serves both directions: how to build the torch module
from a Flax layer, how to build the Flax layer from the torch module, and how each variable maps
between them (``ParamMap``: names and an axis permutation whose inverse gives the way back).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import flax.linen as nn
import numpy as np
import torch
from flax import nnx

from .._errors import LayerMismatchError, RuleRegistrationError, UnknownLayerError, UnsupportedModelError
from .._numerics import Precision, function_rounding
from ._hints import Hint


class ParamMap(NamedTuple):
    """One variable of a layer in both frameworks.

    ``to_torch_axes`` permutes the Flax array's axes into torch's layout (``(1, 0)`` turns a Dense
    kernel ``(in, out)`` into a Linear weight ``(out, in)``); ``None`` keeps the layout.
    """

    collection: str
    flax_name: str
    torch_name: str
    to_torch_axes: tuple[int, ...] | None = None

    def flax_to_torch(self, array: np.ndarray, *, stacked: bool = False) -> np.ndarray:
        """Lay a Flax array out as torch expects (a view; copy it to own the memory). ``stacked``: the
        array carries a leading axis of seeds, which stays first."""
        if self.to_torch_axes is None:
            return array
        return np.transpose(array, (0, *(a + 1 for a in self.to_torch_axes)) if stacked else self.to_torch_axes)

    def torch_to_flax(self, array: np.ndarray) -> np.ndarray:
        """Lay a torch array out as Flax expects: the inverse permutation of ``flax_to_torch``."""
        return array if self.to_torch_axes is None else np.transpose(array, np.argsort(self.to_torch_axes))


class LayerRule:
    """Base of the conversion rules. Subclass it, set the class attributes, and decorate with ``@register``.

    Attributes:
        kind: the name used in messages and reports (``"Dense"``).
        flax_keys: the Flax module classes, or the functions, this rule converts (matched exactly).
        torch_types: the torch module classes it produces and accepts back (matched exactly).
    """

    kind: ClassVar[str]
    flax_keys: ClassVar[tuple[Any, ...]]
    torch_types: ClassVar[tuple[type[torch.nn.Module], ...]]
    # torch state-dict entries with no Flax counterpart, left at torch's value (BatchNorm's counter).
    torch_only_keys: ClassVar[tuple[str, ...]] = ()
    # Whether ``error_bound`` accepts ``BoundInputs(stacked=True)`` (a leading seed axis on the inputs and
    # on the variables): the multi-seed sweep then bounds every seed in one call, else it loops over seeds.
    stacked_bounds: ClassVar[bool] = False
    # Whether the layer is elementwise, so that its torch module works in any layout (channels-first too).
    elementwise: ClassVar[bool] = False
    # The known porting mistakes of this kind, tried in order on a call of it that diverges (``_hints``).
    hints: ClassVar[tuple[Hint, ...]] = ()

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        """The variables of this Flax layer and their torch names (none for parameter-free layers)."""
        return ()

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        """The variables of this torch module and their Flax names (none for parameter-free layers)."""
        return ()

    def torch_arrays(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Every torch tensor of this layer, by its name in the torch module, computed from the Flax
        variables. A linear map of them (transposes, reshapes, concatenations), so it maps the
        gradients too. The default lays out each ``param_maps`` variable."""
        return {
            m.torch_name: m.flax_to_torch(np.asarray(variables[m.collection][m.flax_name]))
            for m in self.param_maps(layer, variables)
        }

    def accepts_torch(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` may port this layer when its tensors fit: a module of the rule's torch types,
        or one no rule claims (a module of the user's own)."""
        return type(module) in self.torch_types or _BY_TORCH_TYPE.get(type(module)) is None

    def torch_call(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the torch module on the Flax call's arguments (already torch tensors): its isolated output."""
        return module(*args, **kwargs)

    def torch_constants(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> Mapping[str, float]:
        """torch tensors with no Flax variable that must hold a constant for the same function (a
        LayerNorm with a bias and no scale is torch's LayerNorm with a weight of ones): name -> value."""
        return {}

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        """A torch module of the right kind and shapes for this Flax layer (its values are loaded after)."""
        raise NotImplementedError

    def load_torch(
        self, module: torch.nn.Module, layer: Any, variables: Any, state: Mapping[str, Any], *, assign: bool
    ) -> None:
        """Load ``state`` (laid out for torch) into ``make_torch``'s module and set its constants, strict about
        every key but those left to torch: a mismatch is the rule's bug, never loaded silently."""
        try:
            result = module.load_state_dict(state, strict=False, assign=assign)
        except RuntimeError as e:  # a variable of another shape than the module built from the layer's others
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)
            raise LayerMismatchError(f"the variables do not fit a {self.kind}: {detail}") from None
        constants = self.torch_constants(layer, variables)
        missing = [key for key in result.missing_keys if key not in self.torch_only_keys and key not in constants]
        if missing or result.unexpected_keys:
            raise LayerMismatchError(
                f"the {self.kind} rule left {missing} unfilled and {result.unexpected_keys} unused"
            )
        with torch.no_grad():
            for name, value in constants.items():
                module.get_parameter(name).fill_(value)

    def make_torch_channels_first(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        """The torch module at a position before the flatten of a channels-first model
        (``to_torch(..., channels_last=False)``), whose input is ``(N, C, spatial...)``.

        Raises:
            UnsupportedModelError: for a layer that has no such form (the default, but for elementwise layers).
        """
        if self.elementwise:
            return self.make_torch(layer, variables)
        raise UnsupportedModelError(
            f"{self.kind} has no channels-first torch form (the bridge's are Conv, flatten and elementwise "
            "layers): convert with channels_last=True"
        )

    def make_flax(self, module: torch.nn.Module) -> Any:
        """The unbound Flax layer (module or function) equivalent to this torch module."""
        raise NotImplementedError

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        """The Flax NNX layer equivalent to this torch module (its values are assigned after).

        The default serves parameter-free layers, whose Flax form is a function in both APIs.
        """
        layer = self.make_flax(module)
        if isinstance(layer, nn.Module):
            raise NotImplementedError(f"{type(self).__name__} has no NNX form; to_flax(api='linen') converts it")
        return layer

    def random_input(
        self, layer: Any, variables: Mapping[str, Mapping[str, Any]], rng: np.random.Generator, n: int
    ) -> np.ndarray | None:
        """``n`` random inputs this layer accepts as the first of a chain, when its variables fix their shape."""
        return None

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        """Per-element bound of how far two correct ports' outputs of this layer may differ.

        The default suits elementwise functions with slope at most about 1 (activations): the
        input error passes through, plus the roundings of two implementations of the function.
        Layers that amplify errors (normalisations divide by a small deviation) override it.
        """
        if bound.tol_in.shape == bound.y.shape:
            passed: Any = bound.tol_in
        else:  # the layer changes the shape (a slice, a pooling with no rule): its input error, at most
            passed = np.max(bound.tol_in, initial=0.0)
        return passed + function_rounding(bound.x, bound.y, bound.precision.storage, stacked=bound.stacked)


class BoundInputs(NamedTuple):
    """What an error bound is computed from: the layer's input and output (float64 copies of the
    reference side), the bound on the input's error (zeros in isolated mode), and the precision.
    ``stacked``: every array, and the layer's variables, carry a leading axis of seeds."""

    x: np.ndarray
    y: np.ndarray
    tol_in: np.ndarray
    precision: Precision
    stacked: bool = False


_BY_FLAX_KEY: dict[Any, LayerRule] = {}
_BY_TORCH_TYPE: dict[type[torch.nn.Module], LayerRule] = {}

RuleT = TypeVar("RuleT", bound=type[LayerRule])


def register(rule_class: RuleT) -> RuleT:
    """Class decorator: add a rule to the registry.

    Raises:
        RuleRegistrationError: when one of its Flax keys or torch types already has a rule.
    """
    rule = rule_class()
    for key in rule.flax_keys:
        if key in _BY_FLAX_KEY:
            raise RuleRegistrationError(
                f"{_key_name(key)} already has the rule {type(_BY_FLAX_KEY[key]).__name__}; "
                f"cannot register {rule_class.__name__} for it too"
            )
    for torch_type in rule.torch_types:
        if torch_type in _BY_TORCH_TYPE:
            raise RuleRegistrationError(
                f"torch {torch_type.__name__} already has the rule {type(_BY_TORCH_TYPE[torch_type]).__name__}; "
                f"cannot register {rule_class.__name__} for it too"
            )
    _BY_FLAX_KEY.update(dict.fromkeys(rule.flax_keys, rule))
    _BY_TORCH_TYPE.update(dict.fromkeys(rule.torch_types, rule))
    return rule_class


def unregister(rule_class: type[LayerRule]) -> None:
    """Remove a rule registered with ``register`` (for tests and for replacing a rule on purpose)."""
    for table in (_BY_FLAX_KEY, _BY_TORCH_TYPE):
        for key in [key for key, rule in table.items() if type(rule) is rule_class]:
            del table[key]


def rule_for_flax(layer: Any, where: str) -> LayerRule:
    """The rule for a Flax layer (a module, matched by exact class, or a function, matched by identity).

    Raises:
        UnknownLayerError: naming ``where`` (the layer's position and path) when no rule matches.
    """
    rule = rule_or_none(layer)
    if rule is None:
        raise UnknownLayerError(
            f"{where}: no conversion rule for {_key_name(_flax_key(layer))}; "
            f"supported: {', '.join(supported_flax_kinds())}. "
            "Register one with @bridge.register_rule (see bridge.LayerRule)"
        )
    return rule


def rule_for_torch(module: torch.nn.Module, where: str) -> LayerRule:
    """The rule for a torch module, matched by exact class.

    Raises:
        UnknownLayerError: naming ``where`` when no rule matches.
    """
    rule = _BY_TORCH_TYPE.get(type(module))
    if rule is None:
        supported = ", ".join(sorted(t.__name__ for t in _BY_TORCH_TYPE))
        raise UnknownLayerError(
            f"{where}: no conversion rule for torch {type(module).__name__}; supported: {supported}. "
            "Register one with @bridge.register_rule (see bridge.LayerRule)"
        )
    return rule


def supported_flax_kinds() -> list[str]:
    """Names of every Flax layer kind that has a rule, sorted."""
    return sorted({_key_name(key) for key in _BY_FLAX_KEY})


def registered_rules() -> list[LayerRule]:
    """Every registered rule, once each."""
    return list({id(rule): rule for rule in _BY_FLAX_KEY.values()}.values())


def _key_name(key: Any) -> str:
    if isinstance(key, type):
        api = "nnx" if ".nnx." in f"{key.__module__}." else ("nn" if ".linen." in key.__module__ else key.__module__)
        return f"{api}.{key.__name__}"
    name = getattr(key, "__name__", None)
    return str(name) if name else repr(key)


_BY_METHOD: dict[tuple[type, str], LayerRule] = {}


def register_method(flax_types: tuple[type, ...], method: str, rule: LayerRule) -> None:
    """Give a method other than ``__call__`` of these Flax classes a rule of its own: its calls are captured
    and matched as layers (``nn.Embed.attend``: the output projection tied to the embedding).

    Raises:
        RuleRegistrationError: when one of them already has a rule for that method.
    """
    for flax_type in flax_types:
        if (flax_type, method) in _BY_METHOD:
            raise RuleRegistrationError(f"{_key_name(flax_type)}.{method} already has a rule")
    _BY_METHOD.update({(flax_type, method): rule for flax_type in flax_types})


def captured_methods(flax_type: type) -> tuple[str, ...]:
    """The methods of a Flax class, besides ``__call__``, whose calls have a rule (``("attend",)`` for Embed)."""
    return tuple(method for (cls, method) in _BY_METHOD if cls is flax_type)


def rule_for_call(module: Any, method: str) -> LayerRule | None:
    """The rule of a captured call: ``rule_or_none(module)`` for ``__call__``, else the method's own rule."""
    if method == "__call__":
        return rule_or_none(module)
    return _BY_METHOD.get((type(module), method))


def rule_or_none(layer: Any) -> LayerRule | None:
    """The rule for a Flax layer, or None: the checker compares layers with no rule by their outputs alone."""
    try:
        return _BY_FLAX_KEY.get(_flax_key(layer))
    except TypeError:  # an unhashable callable
        return None


def _flax_key(layer: Any) -> Any:
    """What a Flax layer is looked up by: a module's exact class, a function itself, a partial's function."""
    if isinstance(layer, nn.Module | nnx.Module):
        return type(layer)
    return layer.func if isinstance(layer, functools.partial) else layer
