"""The vectorised multi-seed check: the same verdicts as checking the seeds one by one, and its errors."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import bridge
import flax_impl
import torch_impl
from bridge.check._sweep import init_seeds

SEEDS = range(40, 64)


def _loop_verdicts(model: Any, make_port: Any, seeds: range, **options: Any) -> list[bool]:
    """The naive way: init, load, check, one seed at a time."""
    verdicts = []
    for seed in seeds:
        x = np.ones((1, 3), np.float32)
        variables = model.init(jax.random.PRNGKey(seed), x)
        port = bridge.load_into(model, variables, make_port())
        verdicts.append(bridge.check_equivalence(model, variables, port, seed=seed, grads=False, **options).ok)
    return verdicts


def _template(model: Any, width: int) -> Any:
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), np.ones((1, width), np.float32))


def test_sweep_gives_the_loops_verdicts_for_a_port_that_fails_on_some_seeds() -> None:
    """hard_tanh ported as Hardtanh(-1, 1.5): wrong only where a pre-activation exceeds 1, which depends on the seed."""
    model = nn.Sequential([nn.Dense(4), nn.hard_tanh, nn.Dense(2)])

    def make_port() -> torch.nn.Sequential:
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Hardtanh(-1.0, 1.5), torch.nn.Linear(4, 2))

    loop = _loop_verdicts(model, make_port, SEEDS, n_inputs=2)
    assert True in loop
    assert False in loop
    sweep = bridge.check_equivalence(model, _template(model, 3), make_port(), seeds=SEEDS, n_inputs=2, grads=False)
    assert list(sweep.seed_ok) == loop
    assert sweep.failed_seeds == tuple(s for s, ok in zip(SEEDS, loop, strict=True) if not ok)
    assert not sweep.ok
    assert sweep.detailed_seed == sweep.failed_seeds[0]
    assert sweep.detailed.first_divergence is not None
    assert sweep.detailed.first_divergence.index == 1
    assert sweep.summary().startswith(f"{loop.count(True)}/{len(SEEDS)} seeds equivalent; failed: ")


def test_sweep_of_a_correct_port_passes_every_seed_with_the_loops_margins() -> None:
    model = flax_impl.SeqMLP(hidden=16, out=2)
    port = torch_impl.SeqMLP(3, 16, 2)
    sweep = bridge.check_equivalence(model, _template(model, 3), port, seeds=SEEDS, n_inputs=8, grads=True)
    assert sweep.ok
    assert all(sweep.seed_ok)
    assert len(sweep.seed_ok) == len(SEEDS)
    assert 0 < max(sweep.worst_ratio) <= 1
    assert sweep.detailed.gradients  # the detailed seed's full report compares gradients
    assert _loop_verdicts(model, lambda: torch_impl.SeqMLP(3, 16, 2), SEEDS, n_inputs=8) == [True] * len(SEEDS)


def test_sweep_leaves_the_port_as_it_was() -> None:
    model = flax_impl.SeqMLP(hidden=4, out=2)
    port = torch_impl.SeqMLP(3, 4, 2)
    before = {k: v.clone() for k, v in port.state_dict().items()}
    bridge.check_equivalence(model, _template(model, 3), port, seeds=range(3), grads=False)
    assert all(torch.equal(before[k], v) for k, v in port.state_dict().items())


@pytest.mark.parametrize("seeds", [[0, 7, 2**31 + 5, 2**32 - 1]], ids=["with-seeds-above-int32"])
def test_vectorised_init_is_bit_for_bit_each_seeds_own_init(seeds: list[int]) -> None:
    model = flax_impl.SeqMLP(hidden=5, out=2)
    xs = np.zeros((len(seeds), 2, 3), np.float32)
    stacked = init_seeds(model, seeds, xs)
    for i, seed in enumerate(seeds):
        own = model.init(jax.random.PRNGKey(seed), xs[i])
        for mine, theirs in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(own), strict=True):
            np.testing.assert_array_equal(mine[i], np.asarray(theirs), err_msg=f"seed {seed}")


@pytest.mark.slow
def test_sweep_of_a_cnn_and_a_normalised_mlp_matches_the_loop() -> None:
    """Layers whose bounds are computed seed by seed (Conv, LayerNorm, BatchNorm) and torch modules run under vmap."""
    cnn = nn.Sequential([nn.Conv(3, (3, 3), strides=2, padding="SAME"), jax.nn.relu, bridge.flatten, nn.Dense(2)])
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 2)).astype(np.float32)
    template = jax.eval_shape(cnn.init, jax.random.PRNGKey(0), x)
    port = bridge.to_torch(cnn, cnn.init(jax.random.PRNGKey(0), x))
    sweep = bridge.check_equivalence(cnn, template, port, x, seeds=range(5), grads=False)
    loop = []
    for seed in range(5):
        variables = cnn.init(jax.random.PRNGKey(seed), x)
        loop.append(bridge.check_equivalence(cnn, variables, bridge.to_torch(cnn, variables), x, grads=False).ok)
    assert list(sweep.seed_ok) == loop == [True] * 5

    mlp = nn.Sequential([nn.Dense(8), nn.LayerNorm(), nn.gelu, nn.BatchNorm(use_running_average=True), nn.Dense(2)])
    port = bridge.to_torch(mlp, mlp.init(jax.random.PRNGKey(0), np.ones((1, 3), np.float32)))
    naive = bridge.to_torch(mlp, mlp.init(jax.random.PRNGKey(0), np.ones((1, 3), np.float32)))
    naive[1].eps = 1e-5  # torch's default epsilon: the naive port
    template = _template(mlp, 3)
    assert bridge.check_equivalence(mlp, template, port, seeds=range(4), grads=False).ok
    sweep = bridge.check_equivalence(mlp, template, naive, seeds=range(4), grads=False)
    assert sweep.seed_ok == (False,) * 4


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([], "seeds is empty"),
        ([-1], r"every seed must be an integer in \[0, 2\*\*32\), got -1"),
        ([2**32], r"got 4294967296"),
        ([1.5], "got 1.5"),
        ([True], "got True"),
        (3, "seeds must be an iterable of integers"),
    ],
    ids=["empty", "negative", "too-large", "fractional", "bool", "not-iterable"],
)
def test_bad_seeds_are_refused(seeds: Any, message: str) -> None:
    model = flax_impl.SeqMLP(hidden=4, out=2)
    with pytest.raises(bridge.InvalidArgumentError, match=message):
        bridge.check_equivalence(model, _template(model, 3), torch_impl.SeqMLP(3, 4, 2), seeds=seeds)


def test_sweep_needs_the_models_tree_and_a_linen_model() -> None:
    model = flax_impl.SeqMLP(hidden=4, out=2)
    port = torch_impl.SeqMLP(3, 4, 2)
    with pytest.raises(bridge.InvalidArgumentError, match="tree and shapes"):
        bridge.check_equivalence(model, _template(flax_impl.SeqMLP(hidden=5, out=2), 3), port, seeds=range(2))
    from flax import nnx

    nnx_model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(bridge.InvalidArgumentError, match="NNX"):
        bridge.check_equivalence(nnx_model, None, torch.nn.Sequential(torch.nn.Linear(3, 2)), seeds=range(2))


def test_sweep_refuses_a_port_that_cannot_take_the_weights() -> None:
    model = flax_impl.SeqMLP(hidden=4, out=2)
    with pytest.raises(bridge.LayerMismatchError, match="shape"):
        bridge.check_equivalence(model, _template(model, 3), torch_impl.SeqMLP(3, 5, 2), seeds=range(2))


def test_sweep_in_float64() -> None:
    with jax.enable_x64(True):
        model = flax_impl.SeqMLP(hidden=8, out=2)
        sweep = bridge.check_equivalence(
            model, _template(model, 3), torch_impl.SeqMLP(3, 8, 2), seeds=range(6), dtype="float64", grads=False
        )
    assert sweep.ok
    assert sweep.settings["dtype"] == "float64"
