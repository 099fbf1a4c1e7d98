"""Pair a chain's positions: Flax position i with torch child i, the tree matching's simplest case (one level,
by position). A torch side with a layer more or fewer is a structure problem, named where it starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..capture import Call, Step
from ..rules import LayerRule
from ._match_tree import Matching, Pair


def match_positions(
    flax_calls: Sequence[Call],
    torch_calls: Sequence[Call],
    rules: Sequence[LayerRule | None],
    input_permutations: Mapping[int, np.ndarray] | None = None,
) -> tuple[Matching, tuple[int, str] | None]:
    """``(matching, structure problem)``: the positions both sides have, paired in order (``arrays``: what the
    rule lays out for torch; ``input_permutation``: the position's entry of ``input_permutations``), what is
    left over on either side, and ``(position, description)`` when the lengths differ (else None)."""
    pairs = []
    for flax, port, rule in zip(flax_calls, torch_calls, rules, strict=False):
        arrays = rule.torch_arrays(flax.module, flax.variables) if rule is not None and flax.variables else {}
        pairs.append(Pair(flax, port, rule, arrays, (input_permutations or {}).get(flax.index)))
    matching = Matching(pairs, list(flax_calls[len(pairs) :]), list(torch_calls[len(pairs) :]))
    return matching, _structure_problem(flax_calls, rules, torch_calls)


def _structure_problem(
    flax_calls: Sequence[Call], rules: Sequence[LayerRule | None], torch_calls: Sequence[Call]
) -> tuple[int, str] | None:
    """When the torch side has more or fewer layers than the chain: the position and a description.

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
        where = Step(first_bad, flax_calls[first_bad].module, _path(flax_calls[first_bad]), {}).where
        return first_bad, f"torch lacks {where}: insert the matching torch layer at position {first_bad}"
    return first_bad, f"the Flax chain has {len(flax_calls)} layers but the torch Sequential has {len(torch_calls)}"


def _path(call: Call) -> tuple[str, ...]:
    return tuple(call.name.split("/")) if call.name else ()
