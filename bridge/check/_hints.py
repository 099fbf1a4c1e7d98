"""Diagnosis: the known porting mistakes, one small hint each, tried on the first divergent call.

A hint re-creates a mistake on the Flax side and names it when the mistaken output reproduces what the torch
layer computed. The hints of one layer kind live with its rule (``LayerRule.hints``: an untransposed Dense
kernel, torch's default epsilon, symmetric padding, ...); here are the ones that fit any kind (training mode,
parameters that differ, another activation, a missing residual), the context the checker builds for them, and
the call hints (trees), which read what both calls were given instead: a port may feed a correct layer wrong
arguments (a boolean attention mask in Flax's convention), which the layer alone, fed Flax's arguments,
cannot show.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from .._errors import RuleRegistrationError
from .._numerics import Precision, function_rounding
from .._tensors import to_numpy
from ..capture import Call, layer_name
from ..match import port_tensors
from ..rules import Hint, HintContext, LayerRule, rule_for_call, rule_or_none
from ..rules.activations import ACTIVATIONS
from ._compare import compare

_HINTS: list[Hint] = []


def hint(function: Hint) -> Hint:
    """Decorator: register a hint that fits any layer kind (a kind's own hints are its rule's ``hints``)."""
    if any(registered.__name__ == function.__name__ for registered in _HINTS):
        raise RuleRegistrationError(f"a hint named {function.__name__} is registered already")
    _HINTS.append(function)
    return function


def hint_context(
    call: Call,
    torch_module: torch.nn.Module | None,
    x: np.ndarray,
    flax_out: np.ndarray,
    torch_out: np.ndarray | None,
    tolerance: np.ndarray,
    precision: Precision,
    input_permutation: np.ndarray | None = None,
    rule: LayerRule | None = None,
) -> HintContext:
    """The context of a divergent Flax ``call`` (a chain position's or a tree's), "reproduces" judged within
    ``tolerance`` plus the few roundings by which two implementations of one elementary function differ."""

    def judge(candidate: Any) -> bool:
        if torch_out is None:
            return False
        mistaken = np.asarray(candidate, np.float64)
        slack = function_rounding(x, torch_out, precision.storage)
        return mistaken.shape == torch_out.shape and compare(mistaken, torch_out, tolerance + slack).ok

    path = tuple(call.name.split("/")) if call.name else ()
    return HintContext(
        call.module, call.variables, path, layer_name(call.module), torch_module, x, flax_out, torch_out, judge,
        input_permutation, rule,
    )  # fmt: skip


def diagnose(context: HintContext) -> str | None:
    """The first hint that explains the divergence, or None: training mode first, then the rule's own hints
    (``nnx.Linear`` takes Dense's: one rule), then the hints that fit any kind."""
    rule = context.rule or rule_or_none(context.layer)
    first, *others = _HINTS
    for function in (first, *(rule.hints if rule is not None else ()), *others):
        message = function(context)
        if message:
            return message
    return None


@hint
def training_mode(context: HintContext) -> str | None:
    """Dropout and BatchNorm compute differently in training mode; Flax's inference form is torch's eval()."""
    module = context.torch_module
    if (
        module is not None
        and module.training
        and isinstance(module, torch.nn.Dropout | torch.nn.modules.batchnorm._BatchNorm)
    ):
        return f"torch {type(module).__name__} is in training mode: call .eval() on the torch model before comparing"
    return None


@hint
def parameters_differ(context: HintContext) -> str | None:
    """A torch tensor that differs from what its rule lays out from the Flax variables (names the first,
    with the size; a square matrix holding the untransposed values is named as such)."""
    module, rule = context.torch_module, context.rule or rule_or_none(context.layer)
    if module is None or rule is None or not rule.accepts_torch(module):
        return None
    try:
        arrays = rule.torch_arrays(context.layer, context.variables)
    except Exception:  # variables the rule cannot lay out: nothing to compare
        return None
    tensors = port_tensors(module)
    for name, array in arrays.items():
        expected = np.asarray(array, np.float64)
        actual = tensors.get(name)
        if actual is None or tuple(actual.shape) != expected.shape:
            continue
        found = to_numpy(actual).astype(np.float64)
        if np.array_equal(found, expected):
            continue
        if expected.ndim == 2 and np.array_equal(found, expected.T):
            return (
                f"torch {name} holds the Flax values untransposed: a square matrix loads without a shape error; "
                "torch's layout is (out, in), Flax's (in, out): reload it with bridge.load_into(model, "
                "variables, port, inputs=...)"
            )
        relative = np.abs(found - expected).max() / (np.abs(expected).max() or 1.0)
        maps = [m for m in rule.param_maps(context.layer, context.variables) if m.torch_name == name]
        source = (
            f"Flax {maps[0].collection}/{maps[0].flax_name}{' (laid out for torch)' if maps[0].to_torch_axes else ''}"
            if maps
            else "the Flax variables laid out for torch"
        )
        return (
            f"torch {name} differs from {source} by up to {relative:.1e} of its scale: "
            "reload it with bridge.load_into(model, variables, port)"
        )
    return None


def activation_variants() -> dict[str, Callable[[jax.Array], jax.Array]]:
    """Every activation the rules know, with its defaults named, plus both GELU forms and no activation."""
    variants: dict[str, Callable[[jax.Array], jax.Array]] = {}
    for a in ACTIVATIONS:
        if a.kind == "gelu":
            continue
        defaults = ", ".join(f"{arg.flax_name}={arg.flax_default!r}" for arg in a.arguments if arg.flax_name != "axis")
        variants[f"{a.kind} ({defaults})" if defaults else a.kind] = a.function
    variants["gelu (tanh approximation, Flax's default)"] = functools.partial(jax.nn.gelu, approximate=True)
    variants["gelu (exact erf form, torch's default)"] = functools.partial(jax.nn.gelu, approximate=False)
    variants["identity (no activation)"] = lambda x: x
    return variants


def torch_equivalent(layer: Any, variables: Any) -> str | None:
    """The torch module to type for a Flax layer, built by its rule: ``torch.nn.GELU(approximate='tanh')``."""
    rule = rule_or_none(layer)
    if rule is None:
        return None
    try:
        module = rule.make_torch(layer, variables)
    except Exception:  # a rule that needs more than the layer (shapes): no one-line fix to offer
        return None
    where = type(module).__module__
    prefix = "torch.nn." if where.startswith("torch.") else f"{where}."
    return f"{prefix}{module!r}"


def _describe(layer: Any, kind: str) -> str:
    """The Flax layer with its keywords where it has any: ``elu (alpha=0.5)``."""
    keywords = getattr(layer, "keywords", None)
    if keywords:
        return f"{kind} ({', '.join(f'{k}={v!r}' for k, v in keywords.items())})"
    return kind


@hint
def wrong_activation(context: HintContext) -> str | None:
    """An elementwise activation that reproduces the torch output where Flax's does not."""
    if isinstance(context.layer, nn.Module) or context.torch_out is None:
        return None
    for name, function in activation_variants().items():
        if context.reproduces(function(jnp.asarray(context.x))):
            module = type(context.torch_module).__name__ if context.torch_module is not None else "layer"
            fix = torch_equivalent(context.layer, context.variables)
            return f"torch {module} computes {name} where Flax applies {_describe(context.layer, context.kind)}: " + (
                f"use {fix}" if fix else "use the torch activation that computes it"
            )
    return None


@hint
def missing_residual(context: HintContext) -> str | None:
    """A block whose torch output lacks the skip connection: Flax's output minus its input reproduces it."""
    if context.torch_out is None or context.x.shape != context.flax_out.shape:
        return None
    if isinstance(context.layer, nn.Module) and rule_or_none(context.layer) is not None:
        return None  # a layer with a rule has its own hints
    if context.reproduces(context.flax_out - context.x):
        name = "/".join(context.flax_path) or context.kind
        return (
            f"torch's {name} lacks the residual connection Flax's adds (its output is Flax's minus the block's "
            "input): return x + block(x) in the torch forward"
        )
    return None


def glue_hint(
    before: np.ndarray, flax_in: np.ndarray, torch_in: np.ndarray, between: str, precision: Precision
) -> str | None:
    """Explain a call whose torch input differs from Flax's while the call before it agrees: the
    parameter-free computation in between (an activation, a residual) differs. ``before`` is the Flax
    output of the previous call, ``between`` names both calls."""
    if before.shape != flax_in.shape or torch_in.shape != flax_in.shape:
        return None
    tolerance = function_rounding(before, flax_in, precision.storage) * 4

    def close(a: Any, b: np.ndarray) -> bool:
        return compare(np.asarray(a, np.float64), b, tolerance).ok

    if close(torch_in, before) and not close(flax_in, before):
        return f"{between}, torch passes the output on unchanged where Flax adds to it (a missing residual?)"
    variants = activation_variants()
    flax_name = next((name for name, f in variants.items() if close(f(jnp.asarray(before)), flax_in)), None)
    torch_name = next((name for name, f in variants.items() if close(f(jnp.asarray(before)), torch_in)), None)
    if flax_name and torch_name and flax_name != torch_name:
        fix = _GLUE_FIXES.get(flax_name.split(" (")[0] if not flax_name.startswith("gelu") else flax_name, "")
        return f"{between}, torch computes {torch_name} where Flax computes {flax_name}" + (
            f": use {fix}" if fix else ""
        )
    return None


_GLUE_FIXES = {
    "gelu (tanh approximation, Flax's default)": "torch.nn.GELU(approximate='tanh') or F.gelu(x, approximate='tanh')",
    "gelu (exact erf form, torch's default)": "torch.nn.GELU() or F.gelu(x)",
    "relu": "torch.nn.ReLU() or F.relu(x)",
    "silu": "torch.nn.SiLU() or F.silu(x)",
    "tanh": "torch.tanh(x)",
    "sigmoid": "torch.sigmoid(x)",
}


CallHint = Callable[[Call, Call], str | None]
_CALL_HINTS: list[tuple[frozenset[str], CallHint]] = []


def call_hint(*kinds: str) -> Callable[[CallHint], CallHint]:
    """Decorator: register a hint on a matched pair of calls ``(flax_call, torch_call)`` of these Flax kinds."""

    def decorate(function: CallHint) -> CallHint:
        _CALL_HINTS.append((frozenset(kinds), function))
        return function

    return decorate


def diagnose_call(flax_call: Call, torch_call: Call) -> str | None:
    """The first registered call hint that explains a matched call whose torch output differs, or None."""
    rule = rule_for_call(flax_call.module, flax_call.method)
    names = {flax_call.kind, *([rule.kind] if rule is not None else [])}
    for kinds, function in _CALL_HINTS:
        if names & kinds:
            message = function(flax_call, torch_call)
            if message:
                return message
    return None


def _argument(call: Call, name: str, position: int) -> Any:
    if name in call.kwargs:
        return call.kwargs[name]
    return call.args[position] if len(call.args) > position else None


@call_hint("MultiHeadDotProductAttention")
def attention_mask_convention(flax_call: Call, torch_call: Call) -> str | None:
    """A boolean mask passed to ``nn.MultiheadAttention`` in Flax's convention (True = attend) where torch's
    ``attn_mask``/``key_padding_mask`` mean True = masked out: the positions attended are exactly the wrong ones."""
    module, mask = torch_call.module, flax_call.kwargs.get("mask")
    if not isinstance(module, torch.nn.MultiheadAttention) or mask is None or not flax_call.args:
        return None
    query = np.asarray(flax_call.args[0])
    key = _argument(flax_call, "inputs_k", 1)
    if query.ndim != 3:
        return None
    batch, length = query.shape[0], query.shape[1]
    keys = np.shape(key)[1] if key is not None else length
    shape = (batch, module.num_heads, length, keys)
    try:
        flax_allowed = np.broadcast_to(np.asarray(mask).astype(bool), shape)
    except ValueError:
        return None
    given = {
        "key_padding_mask": _argument(torch_call, "key_padding_mask", 3),
        "attn_mask": _argument(torch_call, "attn_mask", 5),
    }
    given = {name: value for name, value in given.items() if isinstance(value, torch.Tensor)}

    def allowed(inverted: tuple[str, ...]) -> np.ndarray | None:
        result = np.ones(shape, bool)
        for name, value in given.items():
            array = value.detach().cpu().numpy()
            blocked = array if array.dtype == bool else np.isneginf(array)
            if name in inverted:
                blocked = ~blocked
            try:
                if name == "key_padding_mask":
                    result &= ~blocked.reshape(batch, 1, 1, keys)
                else:
                    result &= ~(blocked.reshape(shape) if blocked.ndim == 3 else blocked.reshape(1, 1, length, keys))
            except ValueError:
                return None
        return result

    as_given = allowed(()) if given else None
    if as_given is None or np.array_equal(as_given, flax_allowed):
        return None
    booleans = [name for name, value in given.items() if value.dtype == torch.bool]
    for inverted in [(name,) for name in booleans] + ([tuple(booleans)] if len(booleans) > 1 else []):
        candidate = allowed(inverted)
        if candidate is not None and np.array_equal(candidate, flax_allowed):
            names = " and ".join(inverted)
            return (
                f"torch {torch_call.name or 'attention'} (nn.MultiheadAttention) gets {names} in Flax's convention: "
                "Flax attends where a boolean mask is True, torch masks those positions out: pass the inverted "
                f"mask, {inverted[0]}=~mask (logical not)"
            )
    return None
