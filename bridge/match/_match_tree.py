"""Pair the Flax call tree with the torch call tree by structure, never by names.

Leaves are the Flax calls whose module has a rule and holds variables: each is paired with a torch call
whose module holds exactly the tensors the rule lays out from its variables (the same shapes and dtypes,
the parameter signature) and that the rule accepts (its own torch type, or a module no rule claims).
A signature that occurs once on each side matches wherever it runs (branches may run in another order
in the port); equal signatures pair by the values a loaded port holds, then by the same path on both sides
(``a/b/query`` and ``a.b.query``), then in call order (``load_into`` keeps a load paired so only where the
loaded port reproduces the Flax output); what stays unpaired is listed. A Flax composite
with a rule of its own (attention) matches as one unit when a torch module fits it, else its children
are matched. ``mapping`` (Flax path glob -> torch name glob) pairs calls first. Composites without a
rule pair with the smallest torch subtree covering their matched leaves. A chain (an ``nn.Sequential`` against
a torch ``nn.Sequential``) is the fast path: its positions pair in order.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flax import nnx

from .._errors import InvalidArgumentError, LayerMismatchError, at_layer
from .._flax_model import is_nnx
from .._tensors import channels_first_flatten_permutation, is_float, to_numpy
from ..capture import Call, Step, chain_or_none, discover_chain
from ..rules import LayerRule, rule_for_call
from ._match import port_tensors

Signature = tuple[tuple[tuple[int, ...], str], ...]


@dataclass
class Pair:
    """A Flax call and the torch call that ports it; ``rule`` for leaves (None for composites)."""

    flax: Call
    torch: Call
    rule: LayerRule | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # the torch tensors the rule lays out
    # Flax input feature j is torch input feature permutation[j] (a Linear after torch.flatten of NCHW)
    input_permutation: np.ndarray | None = None
    # paired by call order among several calls holding tensors of the same shapes (nothing else told them apart)
    by_order: bool = False


@dataclass
class Matching:
    """Every pair in Flax execution order, and what stayed unpaired on each side; for chain positions of other
    lengths, ``structure``: the position where they start to differ and a description."""

    pairs: list[Pair]
    unmatched_flax: list[Call]
    unmatched_torch: list[Call]
    structure: tuple[int, str] | None = None


def signature(arrays: Mapping[str, Any]) -> Signature:
    """The multiset of (shape, kind) of a set of tensors or arrays, as a sorted tuple. Floating dtypes are one
    kind: a port may hold a float32 model's weights in bfloat16, or a mixed-precision layer's in the dtype it
    computes in; the comparison then says whether that keeps the function."""
    return tuple(sorted((tuple(int(d) for d in a.shape), _kind(a.dtype)) for a in arrays.values()))


def _shapes(held: Signature) -> str:
    """A signature's shapes as a reader writes them: ``(3, 8), (3,)``."""
    return ", ".join(str(shape) for shape, _ in held) or "none"


def _kind(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    return "float" if name in ("float16", "bfloat16", "float32", "float64") else name


def _skipped(call: Call | None, rule: LayerRule | None) -> frozenset[str]:
    """The torch tensor names a rule's torch module holds besides what the Flax call's variables fill: torch-only
    bookkeeping (BatchNorm's ``num_batches_tracked``) and constants (a LayerNorm without scale: ``weight``, ones)."""
    if rule is None:
        return frozenset({"num_batches_tracked"})
    constants = rule.torch_constants(call.module, call.variables) if call is not None else {}
    return frozenset(rule.torch_only_keys) | frozenset(constants)


def _signature_without(tensors: Mapping[str, Any], skip: frozenset[str]) -> Signature:
    return signature({k: v for k, v in tensors.items() if k.rsplit(".", 1)[-1] not in skip})


class _TorchIndex:
    """The torch calls that hold tensors, each module's tensors read once, and for each set of torch-only
    keys a table signature -> calls (in call order): finding the calls that fit a signature is a lookup."""

    def __init__(self, torch_calls: Sequence[Call]) -> None:
        self._tensors: dict[int, dict[str, torch.Tensor]] = {}
        self.candidates = [c for c in torch_calls if self.tensors(c)]
        self._tables: dict[frozenset[str], dict[Signature, list[Call]]] = {}
        self._held: dict[tuple[str, ...], dict[bytes, list[Call]]] = {}

    def tensors(self, call: Call) -> dict[str, torch.Tensor]:
        key = id(call.module)
        if key not in self._tensors:
            self._tensors[key] = port_tensors(call.module)
        return self._tensors[key]

    def signature(self, call: Call, skip: frozenset[str]) -> Signature:
        return _signature_without(self.tensors(call), skip)

    def fitting(self, sig: Signature, skip: frozenset[str]) -> list[Call]:
        table = self._tables.get(skip)
        if table is None:
            table = {}
            for call in self.candidates:
                table.setdefault(_signature_without(self.tensors(call), skip), []).append(call)
            self._tables[skip] = table
        return table.get(sig, [])

    def holding(self, arrays: Mapping[str, np.ndarray], among: Sequence[Call]) -> list[Call]:
        """The calls of ``among`` whose modules hold exactly these values under these names: looked up by a
        digest of a few values of each, then compared whole (no pass over every port tensor)."""
        names = tuple(sorted(arrays))
        table = self._held.get(names)
        if table is None:  # over every candidate: a table built from one group's calls would miss another's
            table = {}
            for call in self.candidates:
                tensors = self.tensors(call)
                if all(n in tensors for n in names):
                    table.setdefault(_sample_digest({n: tensors[n] for n in names}), []).append(call)
            self._held[names] = table
        allowed = {call.index for call in among}
        return [
            call
            for call in table.get(_sample_digest(arrays), [])
            if call.index in allowed and all(_equal(arrays[n], self.tensors(call)[n]) for n in names)
        ]


# How many evenly spaced values of each array the lookup digest reads.
_SAMPLED_VALUES = 64


def _sample_digest(arrays: Mapping[str, Any]) -> bytes:
    """A digest of named arrays or tensors: their names, shapes, dtypes and up to ``_SAMPLED_VALUES`` evenly
    spaced values; equal for equal arrays (a match is then confirmed by comparing them whole)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        value = arrays[name]
        size = int(np.prod(tuple(value.shape), dtype=np.int64))
        picked = np.linspace(0, size - 1, min(size, _SAMPLED_VALUES)).astype(np.int64)
        if isinstance(value, torch.Tensor):
            sample = to_numpy(value.detach().reshape(-1)[torch.from_numpy(picked)])
        else:
            sample = np.asarray(value).reshape(-1)[picked]
        digest.update(f"{name}{tuple(value.shape)}{sample.dtype}".encode())
        digest.update(np.ascontiguousarray(sample).tobytes())
    return digest.digest()


def _equal(array: np.ndarray, tensor: torch.Tensor) -> bool:
    """Whether a tensor holds exactly an array's values (NaN equal to NaN), dtype included."""
    held = to_numpy(tensor)
    return held.dtype == np.asarray(array).dtype and bool(np.array_equal(array, held, equal_nan=is_float(held.dtype)))


def match_calls(
    flax_calls: Sequence[Call],
    torch_calls: Sequence[Call],
    mapping: Mapping[str, str] | None = None,
    *,
    by_position: bool = False,
) -> Matching:
    """Pair the two call trees (see the module docstring). Linear in the number of calls (times the depth
    of the trees): candidates are looked up by signature and by a digest of their values, never scanned.
    ``by_position``: the calls are a chain's positions on each side (an ``nn.Sequential``'s children), the
    simplest tree, paired in order (its fast path)."""
    if by_position:
        return _match_positions(flax_calls, torch_calls)
    leaves = _flax_leaves(flax_calls)
    taken: set[int] = set()
    pairs: list[Pair] = []
    unmatched: list[Call] = []
    index = _TorchIndex(torch_calls)
    candidates = index.candidates
    mapped: set[int] = set()
    for flax_glob, torch_glob in (mapping or {}).items():
        chosen_flax = [c for c in leaves if fnmatch.fnmatchcase(c.name, flax_glob)] or [
            c  # a layer inside a rule-backed composite (attention's query) that the port computes apart
            for c in flax_calls
            if _rule(c) is not None and c.variables.get("params") and fnmatch.fnmatchcase(c.name, flax_glob)
        ]
        chosen_torch = [c for c in candidates if fnmatch.fnmatchcase(c.name, torch_glob) and c.index not in taken]
        if not chosen_flax or len(chosen_flax) != len(chosen_torch):
            raise InvalidArgumentError(
                f"mapping {flax_glob!r} -> {torch_glob!r} selects {len(chosen_flax)} Flax and {len(chosen_torch)} "
                "torch calls; each side must select the same number (one or more): check the names"
            )
        for f, t in zip(chosen_flax, chosen_torch, strict=True):
            rule = _rule(f)
            arrays = rule.torch_arrays(f.module, f.variables) if rule else {}
            held = index.signature(t, _skipped(f, rule)) if rule is not None else None
            if held is not None and held != signature(arrays):
                raise LayerMismatchError(
                    f"mapping pairs Flax {f.name} ({f.kind}) with torch {t.name} ({t.kind}), whose tensors of shapes "
                    f"{_shapes(held)} do not fit the ones it needs, {_shapes(signature(arrays))}"
                )
            pairs.append(Pair(f, t, rule, arrays))
            taken.add(t.index)
        mapped |= {c.index for c in chosen_flax}
        leaves = [c for c in leaves if c.index not in mapped]
    groups: dict[Signature, list[tuple[Call, LayerRule, dict[str, np.ndarray]]]] = {}
    for call in _expand(leaves, flax_calls, index):
        if call.index in mapped:
            continue
        rule = _rule(call)
        assert rule is not None
        arrays = rule.torch_arrays(call.module, call.variables)
        groups.setdefault(signature(arrays), []).append((call, rule, arrays))
    for sig, flax_group in groups.items():
        rules = list({id(rule): rule for _, rule, _ in flax_group}.values())
        fitting = [
            t
            for t in index.fitting(sig, _skipped(flax_group[0][0], flax_group[0][1]))
            if t.index not in taken and any(rule.accepts_torch(t.module) for rule in rules)
        ]
        fitting = _innermost(fitting, torch_calls)
        waiting = []
        for call, rule, arrays in flax_group:  # ties resolved by values where the port already holds them
            if len(flax_group) > 1:
                holding = (
                    t for t in index.holding(arrays, fitting) if t.index not in taken and rule.accepts_torch(t.module)
                )
                same = list(itertools.islice(holding, 2))
                if len(same) == 1:
                    pairs.append(Pair(call, same[0], rule, arrays))
                    taken.add(same[0].index)
                    continue
            waiting.append((call, rule, arrays))
        if len(waiting) > 1 and len(fitting) > 1:  # then the same path on both sides (a/b/query and a.b.query)
            by_path: dict[str, list[Call]] = {}  # a module called twice has two calls, paired call by call
            for t in fitting:
                by_path.setdefault(t.name, []).append(t)
            still = []
            for call, rule, arrays in waiting:
                free = [
                    t
                    for t in by_path.get(call.name.replace("/", "."), [])
                    if t.index not in taken and rule.accepts_torch(t.module)
                ]
                if free:
                    pairs.append(Pair(call, free[0], rule, arrays))
                    taken.add(free[0].index)
                else:
                    still.append((call, rule, arrays))
            waiting = still
        free = [t for t in fitting if t.index not in taken]
        typed = [t for t in free if any(type(t.module) in rule.torch_types for rule in rules)]
        if len(waiting) <= len(typed) < len(free):  # more candidates than calls: the rule's own torch types (a
            fitting = typed  # Linear for a Dense) before a class of the port's own that holds tensors of that shape
        position: dict[int, int] = {}  # then call order: each rule walks the fitting calls once
        for call, rule, arrays in waiting:
            k = position.get(id(rule), 0)
            while k < len(fitting) and (fitting[k].index in taken or not rule.accepts_torch(fitting[k].module)):
                k += 1
            position[id(rule)] = k
            if k == len(fitting):
                unmatched.append(call)
                continue
            ambiguous = len(waiting) > 1 and len(fitting) > 1
            pairs.append(Pair(call, fitting[k], rule, arrays, by_order=ambiguous))
            taken.add(fitting[k].index)
    # another method of a paired module (a tied Embed's attend): the port reads the same tensors inline
    # (h @ embedding.weight.T); compared through what follows it and the gradients, not as a layer of its own
    paired_modules = {p.flax.name for p in pairs if p.rule is not None and p.flax.method == "__call__"}
    unmatched = [c for c in unmatched if c.method == "__call__" or c.name not in paired_modules]
    pairs += pair_blocks(flax_calls, torch_calls, pairs)
    pairs.sort(key=lambda p: p.flax.index)
    paired_torch = {p.torch.index for p in pairs if p.rule is not None}
    leftover = [
        c
        for c in candidates
        if c.index not in paired_torch and not _covered(c, torch_calls, paired_torch) and _own_tensors(c.module)
    ]
    return Matching(pairs, sorted(unmatched, key=lambda c: c.index), leftover)


def _match_positions(flax_calls: Sequence[Call], torch_calls: Sequence[Call]) -> Matching:
    """Flax position i with torch child i (``arrays``: what the rule lays out for torch), what is left over on
    either side, and a structure problem when the lengths differ (see ``_structure_problem``)."""
    rules = [_rule(call) for call in flax_calls]
    pairs = [
        Pair(flax, port, rule, rule.torch_arrays(flax.module, flax.variables) if rule and flax.variables else {})
        for flax, port, rule in zip(flax_calls, torch_calls, rules, strict=False)
    ]
    structure = _structure_problem(flax_calls, rules, torch_calls)
    return Matching(pairs, list(flax_calls[len(pairs) :]), list(torch_calls[len(pairs) :]), structure)


def _structure_problem(
    flax_calls: Sequence[Call], rules: Sequence[LayerRule | None], torch_calls: Sequence[Call]
) -> tuple[int, str] | None:
    """When the torch side has more or fewer positions than the chain: the position and a description.

    Kinds that differ at equal length are no problem by themselves (a custom module may compute the
    same function); the numbers decide, and the hints name a wrong kind.
    """
    if len(torch_calls) == len(flax_calls):
        return None

    def fits(rule: LayerRule | None, call: Call) -> bool:
        return rule is None or type(call.module) in rule.torch_types

    pairs = zip(rules, torch_calls, strict=False)
    first_bad = next(
        (i for i, (rule, call) in enumerate(pairs) if not fits(rule, call)), min(len(rules), len(torch_calls))
    )
    if len(torch_calls) == len(flax_calls) + 1 and all(
        fits(r, c) for r, c in zip(rules[first_bad:], torch_calls[first_bad + 1 :], strict=False)
    ):
        return (
            first_bad,
            f"torch has an extra {torch_calls[first_bad].kind} at position {first_bad} "
            "(a doubled or inserted layer): remove it",
        )
    if len(torch_calls) + 1 == len(flax_calls) and all(
        fits(r, c) for r, c in zip(rules[first_bad + 1 :], torch_calls[first_bad:], strict=False)
    ):
        call = flax_calls[first_bad]
        where = at_layer(first_bad, tuple(call.name.split("/")) if call.name else (), call.kind)
        return first_bad, f"torch lacks {where}: insert the matching torch layer at position {first_bad}"
    return first_bad, f"the Flax chain has {len(flax_calls)} layers but the torch Sequential has {len(torch_calls)}"


def unpaired_flax(call: Call, calls: Sequence[Call]) -> str:
    """Why a Flax call stayed unpaired, naming it (a call without a path of its own by its caller's)."""
    if call.name or call.parent is None:
        return f"Flax {call.name} ({call.kind}) has no torch counterpart holding tensors of the same shapes"
    parent = calls[call.parent].name or "(the model)"
    return f"Flax {parent} calls a {call.kind} without a path of its own that no torch module takes the place of"


def chain_steps(
    model: Any, variables: Any, port: torch.nn.Module, inputs: Any, torch_inputs: Any, mapping: Any
) -> tuple[Step, ...] | None:
    """The chain's steps when a pair is checked and loaded as chain positions, found once for the caller to
    use; None when it is checked and loaded as call trees: a port that is not an ``nn.Sequential``, a model
    that is not one chain, several inputs (a tuple or a dict), or options only trees take (``torch_inputs``,
    ``mapping``). An NNX model is a chain when it is an ``nnx.Sequential`` against an ``nn.Sequential`` port."""
    if not isinstance(port, torch.nn.Sequential) or torch_inputs is not None or mapping is not None:
        return None
    if isinstance(inputs, tuple | Mapping):  # several arguments (a list is one array, as NumPy reads it)
        return None
    if is_nnx(model):
        return discover_chain(model, variables) if isinstance(model, nnx.Sequential) else None
    return chain_or_none(model, variables)


def tied_variables(pairs: Sequence[Pair]) -> dict[str, dict[str, torch.Tensor]]:
    """The Flax variables that fill more than one torch tensor name (``Embed_0/embedding`` fills the embedding's
    weight and, through ``Embed.attend``, the output Linear's; a Flax module called twice fills both of the
    port's modules): Flax path -> {qualified torch name: tensor}. One tensor under two names is shared."""
    fills: dict[str, dict[str, torch.Tensor]] = {}
    calls_of: dict[str, int] = {}
    for pair in pairs:
        calls_of[pair.flax.name] = calls_of.get(pair.flax.name, 0) + 1
    for pair in pairs:
        if pair.rule is None or calls_of[pair.flax.name] < 2:  # one pair per Flax module: it fills one name each
            continue
        tensors = port_tensors(pair.torch.module)
        for m in pair.rule.param_maps(pair.flax.module, pair.flax.variables):
            tensor = tensors.get(m.torch_name)
            if tensor is not None:
                source = "/".join(part for part in (pair.flax.name, m.flax_name) if part)
                name = ".".join(part for part in (pair.torch.name, m.torch_name) if part)
                fills.setdefault(source, {})[name] = tensor
    return {source: named for source, named in fills.items() if len(named) > 1}


def describe_ties(ties: Mapping[str, Mapping[str, torch.Tensor]]) -> list[str]:
    """One line per tied Flax variable: what it fills, and whether the port shares one tensor or holds copies."""
    lines = []
    for source, named in ties.items():
        shared = len({id(t) for t in named.values()}) == 1
        how = "shared: one tensor" if shared else "copies: equal now, but they will train apart"
        lines.append(f"{source} fills {', '.join(sorted(named))} ({how})")
    return lines


def find_input_permutations(pairs: Sequence[Pair]) -> None:
    """For each matched Linear-like leaf whose torch input holds the Flax input's features in another
    order, the channels-first flatten permutation that explains it (``pair.input_permutation``)."""
    for pair in pairs:
        if pair.rule is None or not pair.flax.args or not pair.torch.args:
            continue
        flax_in, torch_in = pair.flax.args[0], pair.torch.args[0]
        if not isinstance(torch_in, torch.Tensor) or not hasattr(flax_in, "shape"):
            continue
        found = flatten_permutation(np.asarray(flax_in), torch_in.detach().double().numpy())
        if found is not None:
            pair.input_permutation = found


def flatten_permutation(flax_value: np.ndarray, torch_value: np.ndarray) -> np.ndarray | None:
    """The channels-first flatten permutation ``p`` with ``torch_value[:, p] ~ flax_value`` where the two
    ``(batch, features)`` arrays hold the same features in another order (torch's flatten of NCHW against
    Flax's of NHWC): of every factorisation ``(C, H*W)`` of the width, the one that fits the values best,
    kept when it fits them far better than the order as it is (rounding, bfloat16's too, is far below the
    size of the values); None when they are in the same order or no factorisation explains them."""
    x_f, x_t = np.asarray(flax_value, np.float64), np.asarray(torch_value, np.float64)
    if x_f.ndim != 2 or x_f.shape != x_t.shape or x_f.shape[1] < 4:
        return None
    finite = np.isfinite(x_f).all(axis=1) & np.isfinite(x_t).all(axis=1)  # rows holding NaN say nothing of order
    if not finite.any():
        return None
    x_f, x_t = x_f[finite], x_t[finite]
    as_is = float(np.abs(x_t - x_f).mean())
    if as_is <= 1e-3 * float(np.abs(x_f).mean()):
        return None  # same order
    width = x_f.shape[1]
    fits = [
        (float(np.abs(x_t[:, p] - x_f).mean()), p)
        for p in (channels_first_flatten_permutation(c, width // c) for c in range(2, width // 2 + 1) if width % c == 0)
    ]
    error, best = min(fits, key=lambda fit: fit[0], default=(np.inf, None))
    return best if error * _CLEARLY_BETTER < as_is else None


# How many times closer to the values the flatten permutation must bring torch's features than their order as it is.
_CLEARLY_BETTER = 8.0


def _rule(call: Call) -> LayerRule | None:
    return rule_for_call(call.module, call.method)


def _flax_leaves(flax_calls: Sequence[Call], among: Sequence[Call] | None = None) -> list[Call]:
    """Calls (of ``among``, default all) of modules with a rule and variables, outermost first: a
    rule-backed composite hides its children."""
    leaves: list[Call] = []
    hidden: set[int] = set()
    for call in flax_calls if among is None else among:
        if call.index in hidden:
            continue
        if _rule(call) is not None and call.variables.get("params"):
            leaves.append(call)
            hidden |= descendants(call, flax_calls)
    return leaves


def _expand(leaves: list[Call], flax_calls: Sequence[Call], index: _TorchIndex) -> list[Call]:
    """Replace a rule-backed composite (attention) by its rule-backed children when no torch call fits it."""
    result: list[Call] = []
    for call in leaves:
        rule = _rule(call)
        assert rule is not None
        if not call.children:
            result.append(call)
            continue
        sig = signature(rule.torch_arrays(call.module, call.variables))
        if any(rule.accepts_torch(t.module) for t in index.fitting(sig, _skipped(call, rule))):
            result.append(call)
            continue
        children = [flax_calls[i] for i in sorted(descendants(call, flax_calls))]
        result += _flax_leaves(flax_calls, children) or [call]
    return result


def descendants(call: Call, calls: Sequence[Call]) -> set[int]:
    """The indices of every call made inside ``call``."""
    found: set[int] = set()
    stack = list(call.children)
    while stack:
        index = stack.pop()
        found.add(index)
        stack += calls[index].children
    return found


def _innermost(fitting: list[Call], torch_calls: Sequence[Call]) -> list[Call]:
    """Drop wrappers: a call whose descendant call fits the same signature is not the layer itself."""
    indices = {c.index for c in fitting}
    return [c for c in fitting if not (descendants(c, torch_calls) & indices)]


def pair_blocks(flax_calls: Sequence[Call], torch_calls: Sequence[Call], leaves: Sequence[Pair]) -> list[Pair]:
    """Each Flax call that contains matched leaves (and is not one) with the torch call that is the lowest
    common ancestor of their partners; the model's own call pairs with the port's. Computed bottom up
    (a call starts after its parent: reversed start order visits children first). A composite whose
    partners' ancestor also holds other matched layers, or is itself one of those layers (a Dense and its
    activation wrapped in a Flax module, the activation applied by the torch port's caller), has no
    counterpart (the port computes that block inline, in a bigger module): it is left out, and its layers
    are compared one by one."""
    partner = {p.flax.index: p.torch.index for p in leaves}
    depth = [0] * len(torch_calls)
    for call in torch_calls:  # parents start first
        depth[call.index] = 0 if call.parent is None else depth[call.parent] + 1
    inside: dict[int, int] = {}  # Flax call -> common ancestor of the partners of the calls inside it
    for call in reversed(flax_calls):
        below = inside.get(call.index)
        if call.parent is None:
            continue
        covered = partner.get(call.index, below)
        if call.index in partner and below is not None:
            covered = _common_ancestor(partner[call.index], below, torch_calls, depth)
        if covered is not None:
            above = inside.get(call.parent)
            inside[call.parent] = covered if above is None else _common_ancestor(above, covered, torch_calls, depth)
    partnered = set(partner.values())
    flax_held, torch_held = _held(flax_calls, set(partner)), _held(torch_calls, partnered)
    result: list[Pair] = []
    for call in flax_calls:
        if call.index in partner:
            continue
        if call.parent is None:
            result.append(Pair(call, torch_calls[0], None))
        elif (
            call.index in inside
            and inside[call.index] not in partnered  # a layer's own module computes that layer only
            and torch_held[inside[call.index]] <= flax_held[call.index]
        ):
            result.append(Pair(call, torch_calls[inside[call.index]], None))
    return result


def _held(calls: Sequence[Call], paired: set[int]) -> list[int]:
    """For each call, how many paired calls its subtree holds (itself included)."""
    held = [int(call.index in paired) for call in calls]
    for call in reversed(calls):  # children before parents
        if call.parent is not None:
            held[call.parent] += held[call.index]
    return held


def _common_ancestor(a: int, b: int, calls: Sequence[Call], depth: Sequence[int]) -> int:
    """The lowest call that contains (or is) both calls ``a`` and ``b``."""
    while depth[a] > depth[b]:
        a = calls[a].parent  # type: ignore[assignment]
    while depth[b] > depth[a]:
        b = calls[b].parent  # type: ignore[assignment]
    while a != b:
        a, b = calls[a].parent, calls[b].parent  # type: ignore[assignment]
    return a


def _covered(call: Call, torch_calls: Sequence[Call], paired: set[int]) -> bool:
    """Whether a paired call lies inside ``call`` or ``call`` inside a paired leaf (its tensors are accounted for)."""
    if descendants(call, torch_calls) & paired:
        return True
    parent = call.parent
    while parent is not None:
        if parent in paired:
            return True
        parent = torch_calls[parent].parent
    return False


def _own_tensors(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
