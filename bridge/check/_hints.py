"""Diagnosis: the known porting mistakes, one small rule each, tried on the first divergent layer.

A hint re-creates a mistake on the Flax side (an untransposed kernel, torch's default epsilon, an
exact GELU, ...) and names it when the mistaken output reproduces what the torch layer computed. A call
hint (trees) reads what both calls were given instead: a port may feed a correct layer wrong arguments
(a boolean attention mask in Flax's convention), which the layer alone, fed Flax's arguments, cannot show.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from .._errors import RuleRegistrationError
from .._flax_model import run_layer
from .._numerics import Precision, function_rounding
from .._tensors import to_numpy
from ..capture._capture_tree import Call
from ..capture._chain import Step
from ..match._match import port_tensors
from ..rules import LayerRule
from ..rules._registry import rule_for_call, rule_or_none
from ..rules.activations import ACTIVATIONS
from ._compare import compare


class HintContext(NamedTuple):
    """The divergent position: the Flax step, the torch module there (None if missing), the Flax layer's
    input and output, the torch layer's output on that same input, and the tolerance used."""

    step: Step
    torch_module: torch.nn.Module | None
    x: np.ndarray
    flax_out: np.ndarray
    torch_out: np.ndarray | None
    tolerance: np.ndarray
    precision: Precision
    # For the layer after a channels-first flatten in torch's order: Flax feature j is torch column perm[j].
    input_permutation: np.ndarray | None = None
    # The rule of the call (trees): a method's own (Embed.attend) where it is not the layer's.
    rule: LayerRule | None = None


Hint = Callable[[HintContext], str | None]
_HINTS: list[tuple[frozenset[str] | None, Hint]] = []


def hint(*kinds: str) -> Callable[[Hint], Hint]:
    """Decorator: register a hint for the given Flax layer kinds (none: for every kind)."""

    def decorate(function: Hint) -> Hint:
        if any(registered.__name__ == function.__name__ for _, registered in _HINTS):
            raise RuleRegistrationError(f"a hint named {function.__name__} is registered already")
        _HINTS.append((frozenset(kinds) or None, function))
        return function

    return decorate


def diagnose(context: HintContext) -> str | None:
    """The first registered hint that explains the divergence, or None."""
    rule = context.rule or rule_or_none(context.step.layer)
    names = {context.step.kind, *([rule.kind] if rule is not None else [])}  # nnx.Linear takes Dense's hints
    for kinds, function in _HINTS:
        if kinds is None or names & kinds:
            message = function(context)
            if message:
                return message
    return None


def reproduces(context: HintContext, candidate: Any) -> bool:
    """Whether a mistaken Flax output reproduces the torch output within the tolerance, plus the
    few roundings by which two implementations of one elementary function differ."""
    if context.torch_out is None:
        return False
    mistaken = np.asarray(candidate, np.float64)
    slack = function_rounding(context.x, context.torch_out, context.precision.storage)
    return (
        mistaken.shape == context.torch_out.shape and compare(mistaken, context.torch_out, context.tolerance + slack).ok
    )


def apply_flax_layer(step: Step, x: np.ndarray, **changes: Any) -> np.ndarray:
    """Run one Flax layer of the chain on its own, optionally with changed attributes (``epsilon=1e-5``)."""
    return np.asarray(run_layer(step.layer, step.variables, jnp.asarray(x), **changes))


@hint()
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


@hint("Dense")
def dense_layout(context: HintContext) -> str | None:
    """An untransposed square kernel, or a bias present on one side only."""
    module = context.torch_module
    if not isinstance(module, torch.nn.Linear):
        return None
    kernel = np.asarray(context.step.variables["params"]["kernel"], np.float64)
    bias = context.step.variables["params"].get("bias")
    weight = to_numpy(module.weight).astype(np.float64)
    if weight.shape == kernel.shape and np.array_equal(weight, kernel) and not np.array_equal(kernel, kernel.T):
        return (
            "the Linear weight holds the Dense kernel untransposed: a square kernel loads without a shape error; "
            "torch weight is (out, in), Flax kernel is (in, out): load kernel.T, e.g. "
            "bridge.load_into(model, variables, port)"
        )
    if bias is not None and module.bias is None and reproduces(context, context.x @ kernel):
        return "the torch Linear has no bias but the Flax Dense does: use Linear(..., bias=True) and load the bias"
    if bias is None and module.bias is not None:
        return "the torch Linear has a bias the Flax Dense lacks (use_bias=False): use Linear(..., bias=False)"
    return None


@hint("Dense")
def unpermuted_after_flatten(context: HintContext) -> str | None:
    """torch's ``nn.Flatten`` of NCHW orders features (C, H, W); the Flax Dense after its flatten expects
    (H, W, C): the Linear's weight columns must be permuted to match, else it reads the wrong features."""
    permutation = context.input_permutation
    if permutation is None:
        return None
    params = context.step.variables["params"]
    kernel = np.asarray(params["kernel"], np.float64)
    reordered = context.x[..., np.argsort(permutation)] @ kernel + np.asarray(params.get("bias", 0.0), np.float64)
    if not reproduces(context, reordered):
        return None
    positions = len(permutation) // _channels(permutation)
    return (
        "torch's flatten of NCHW (nn.Flatten, torch.flatten) orders the features (C, H, W), Flax's (H, W, C), "
        "and this Linear's "
        "weight columns are in Flax's order: permute them, weight = kernel.reshape("
        f"{positions}, {_channels(permutation)}, -1).transpose(1, 0, 2).reshape({len(permutation)}, -1).T, "
        "or call bridge.load_into(model, variables, port, channels_last=False)"
    )


def _channels(permutation: np.ndarray) -> int:
    """C of a flatten permutation ``perm[p * C + c] = c * P + p``: feature (p=1, c=0), index C, is column 1."""
    return int(np.argmax(permutation == 1)) or 1


@hint("BatchNorm")
def batchnorm_statistics_missing(context: HintContext) -> str | None:
    """A torch BatchNorm whose running statistics are still torch's initial ones (mean 0, variance 1) where
    Flax's ``batch_stats`` hold others: the statistics were never loaded (only the parameters were)."""
    module = context.torch_module
    stats = context.step.variables.get("batch_stats", {})
    if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or module.running_mean is None or not stats:
        return None
    running_var = module.running_var
    assert running_var is not None
    path = "/".join(("batch_stats", *context.step.flax_path))
    missing = []
    for torch_name, tensor, flax_name, initial in (
        ("running_mean", module.running_mean, "mean", 0.0),
        ("running_var", running_var, "var", 1.0),
    ):
        flax = np.asarray(stats.get(flax_name, initial), np.float64)
        if bool(torch.all(tensor == initial)) and not np.all(flax == initial):
            missing.append(f"{torch_name} <- {path}/{flax_name}")
    if not missing:
        return None
    return (
        f"torch {type(module).__name__} still holds its initial running statistics (mean 0, variance 1) but Flax's "
        f"batch_stats differ: load them ({'; '.join(missing)}), e.g. bridge.load_into(model, variables, port, "
        "inputs=...), which fills BatchNorm statistics from batch_stats"
    )


@hint()
def parameters_differ(context: HintContext) -> str | None:
    """A torch tensor that differs from what its rule lays out from the Flax variables (names the first,
    with the size; a square matrix holding the untransposed values is named as such)."""
    module, rule = context.torch_module, context.rule or rule_or_none(context.step.layer)
    if module is None or rule is None or not rule.accepts_torch(module):
        return None
    try:
        arrays = rule.torch_arrays(context.step.layer, context.step.variables)
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
        maps = [m for m in rule.param_maps(context.step.layer, context.step.variables) if m.torch_name == name]
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


@hint("Conv")
def symmetric_padding(context: HintContext) -> str | None:
    """torch's ``padding=k // 2`` pads both sides alike; XLA's 'SAME' pads ``total // 2`` low and the rest high."""
    layer = context.step.layer
    if context.torch_module is None or getattr(layer, "padding", None) not in ("SAME", "same"):
        return None
    kernel_size = np.shape(context.step.variables["params"]["kernel"])[:-2]
    dilation = layer.kernel_dilation or 1
    dilations = (dilation,) * len(kernel_size) if isinstance(dilation, int) else tuple(dilation)
    symmetric = [((k - 1) * d // 2, (k - 1) * d // 2) for k, d in zip(kernel_size, dilations, strict=True)]
    if reproduces(context, apply_flax_layer(context.step, context.x, padding=symmetric)):
        return (
            f"torch pads symmetrically ({symmetric[0][0]} on each side) where Flax 'SAME' with stride "
            f"{layer.strides} pads total // 2 low and the rest high: pad explicitly with functional.pad and "
            "padding=0 (bridge.torch_layers.FlaxConv2d does)"
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


def torch_equivalent(step: Step) -> str | None:
    """The torch module to type for a Flax layer, built by its rule: ``torch.nn.GELU(approximate='tanh')``."""
    rule = rule_or_none(step.layer)
    if rule is None:
        return None
    try:
        module = rule.make_torch(step.layer, step.variables)
    except Exception:  # a rule that needs more than the layer (shapes): no one-line fix to offer
        return None
    where = type(module).__module__
    prefix = "torch.nn." if where.startswith("torch.") else f"{where}."
    return f"{prefix}{module!r}"


def _describe(step: Step) -> str:
    """The Flax layer with its keywords where it has any: ``elu (alpha=0.5)``."""
    keywords = getattr(step.layer, "keywords", None)
    if keywords:
        return f"{step.kind} ({', '.join(f'{k}={v!r}' for k, v in keywords.items())})"
    return step.kind


@hint()
def wrong_activation(context: HintContext) -> str | None:
    """An elementwise activation that reproduces the torch output where Flax's does not."""
    if isinstance(context.step.layer, nn.Module) or context.torch_out is None:
        return None
    for name, function in activation_variants().items():
        if reproduces(context, function(jnp.asarray(context.x))):
            module = type(context.torch_module).__name__ if context.torch_module is not None else "layer"
            fix = torch_equivalent(context.step)
            return f"torch {module} computes {name} where Flax applies {_describe(context.step)}: " + (
                f"use {fix}" if fix else "use the torch activation that computes it"
            )
    return None


@hint("softmax", "log_softmax")
def softmax_axis(context: HintContext) -> str | None:
    """torch's softmax without ``dim`` picks dim 0 on 3-D inputs; Flax normalises the last axis."""
    function = jax.nn.softmax if context.step.kind == "softmax" else jax.nn.log_softmax
    for axis in range(context.x.ndim - 1):
        if reproduces(context, function(jnp.asarray(context.x), axis=axis)):
            module = "Softmax" if context.step.kind == "softmax" else "LogSoftmax"
            return f"torch normalises over dim {axis}, Flax over the last axis: use torch.nn.{module}(dim=-1)"
    return None


@hint("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm")
def norm_epsilon(context: HintContext) -> str | None:
    """Normalisation epsilons differ by default (Flax 1e-6; torch LayerNorm/GroupNorm 1e-5, RMSNorm machine eps)."""
    module = context.torch_module
    torch_eps = getattr(module, "eps", None)
    if isinstance(module, torch.nn.RMSNorm) and torch_eps is None:  # torch's default: the dtype's machine epsilon
        torch_eps = torch.finfo(module.weight.dtype if module.weight is not None else torch.float32).eps
    flax_eps = getattr(context.step.layer, "epsilon", None)
    if module is None or torch_eps is None or flax_eps is None or torch_eps == flax_eps:
        return None
    if reproduces(context, apply_flax_layer(context.step, context.x, epsilon=float(torch_eps))):
        fixed = copy.copy(module)  # the port's own module with Flax's epsilon: its class, its other options
        fixed.eps = flax_eps
        example = f", e.g. torch.nn.{fixed!r}" if type(module).__module__.startswith("torch.nn.") else ""
        return (
            f"torch {type(module).__name__} uses eps={torch_eps:g} where Flax {context.step.kind} uses "
            f"epsilon={flax_eps:g}: construct it with eps={flax_eps:g}{example}"
        )
    return None


@hint()
def missing_residual(context: HintContext) -> str | None:
    """A block whose torch output lacks the skip connection: Flax's output minus its input reproduces it."""
    if context.torch_out is None or context.x.shape != context.flax_out.shape:
        return None
    if isinstance(context.step.layer, nn.Module) and rule_or_none(context.step.layer) is not None:
        return None  # a layer with a rule has its own hints
    if reproduces(context, context.flax_out - context.x):
        name = "/".join(context.step.flax_path) or context.step.kind
        return (
            f"torch's {name} lacks the residual connection Flax's adds (its output is Flax's minus the block's "
            "input): return x + block(x) in the torch forward"
        )
    return None


def _attention_variant(change: str, head_dim: int, base: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """The layer's own attention function ``base`` with one mistake of a port made in it."""

    def attention(query: jax.Array, key: jax.Array, value: jax.Array, **options: Any) -> jax.Array:
        if change == "swapped":
            query, key = key, query
        elif change == "scale 1/d":
            query = query / np.sqrt(head_dim)
        elif change == "no scale":
            query = query * np.sqrt(head_dim)
        return base(query, key, value, **options)

    return attention


@hint("MultiHeadDotProductAttention")
def attention_mistakes(context: HintContext) -> str | None:
    """Swapped query and key, or a softmax scale other than 1/sqrt(head_dim)."""
    params = context.step.variables.get("params", {})
    kernel = params.get("query", {}).get("kernel")
    if kernel is None or context.torch_out is None:
        return None
    head_dim = int(np.shape(kernel)[-1])
    messages = {
        "swapped": "torch swaps query and key (scores = k @ q^T): compute softmax(q @ k^T / sqrt(d)) @ v",
        "scale 1/d": f"torch scales the scores by 1/d (d = {head_dim}) where Flax scales by 1/sqrt(d): "
        f"divide q @ k^T by sqrt({head_dim}) = {np.sqrt(head_dim):.4g}",
        "no scale": f"torch does not scale the scores; Flax divides q @ k^T by sqrt(d) = {np.sqrt(head_dim):.4g}: "
        "do the same (torch.nn.functional.scaled_dot_product_attention does)",
    }
    for change, message in messages.items():
        variant = _attention_variant(
            change, head_dim, getattr(context.step.layer, "attention_fn", None) or nn.dot_product_attention
        )
        try:
            mistaken = apply_flax_layer(context.step, context.x, attention_fn=variant)
        except Exception:  # an attention module that does not take attention_fn
            return None
        if reproduces(context, mistaken):
            return message
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
