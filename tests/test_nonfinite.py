"""NaN and Inf: undefined on both sides where they come from the inputs or weights (reported, not judged
in gradients), a mismatch wherever one side alone produces them; compute dtypes cast with ``dtype=``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import small_mlp

import bridge


def test_a_nan_input_row_is_reported_and_the_rest_judged() -> None:
    """JAX's relu passes a zero gradient at NaN, torch's passes NaN: the row's gradients are undefined."""
    model, variables, x = small_mlp()
    x[3, 1] = np.nan
    report = bridge.check_equivalence(model, variables, bridge.to_torch(model, variables), x)
    assert report.ok, str(report)
    assert report.settings["gradient_rows_dropped_nonfinite"] == 1
    assert report.settings["nonfinite_outputs"] == {"flax": 3, "torch": 3}
    assert report.gradients  # the 15 finite rows are judged
    assert "custom backward" not in str(report)


def test_nan_weights_give_nan_on_both_sides_and_no_false_gradient_verdict() -> None:
    model, variables, x = small_mlp()
    broken = jax.tree_util.tree_map(np.array, variables)
    broken["params"]["layers_0"]["kernel"][0, 0] = np.nan
    report = bridge.check_equivalence(model, broken, bridge.to_torch(model, broken), x)
    assert report.ok, str(report)
    assert report.settings["gradient_rows_dropped_nonfinite"] == 16
    assert report.settings["nonfinite_outputs"] == {"flax": 48, "torch": 48}


def test_nan_produced_by_the_port_alone_is_a_mismatch() -> None:
    model, variables, x = small_mlp()

    class NaNAtZero(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x > 0, x, x * torch.tensor(float("nan")))

    port = bridge.to_torch(model, variables)
    port[1] = NaNAtZero()
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.index == 1
    assert report.layers[1].end_to_end.nonfinite_mismatched > 0


def test_dtype_casts_the_compute_dtype_of_a_sequential_too() -> None:
    half = nn.Sequential([nn.Dense(8, dtype=jnp.float16, param_dtype=jnp.float16), nn.Dense(3, dtype=jnp.float16)])
    x = np.random.default_rng(1).standard_normal((16, 5)).astype(np.float32)
    variables = half.init(jax.random.PRNGKey(0), x)
    report = bridge.check_equivalence(half, variables, bridge.to_torch(half, variables), x, dtype="float32")
    assert report.ok, str(report)
    assert report.settings["dtype"] == "float32"


def test_a_compute_dtype_the_check_cannot_change_is_refused_with_the_fix() -> None:
    class Half(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Sequential([nn.Dense(4, dtype=jnp.float16)])(x)

    model = Half()
    x = np.ones((2, 3), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.raises(bridge.InvalidArgumentError, match=r"computes in float16 .*check with dtype='float16'"):
        bridge.check_equivalence(model, variables, bridge.to_torch(model, variables), x, dtype="float32")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), zeros=st.floats(0.0, 0.5))
def test_the_finite_fast_path_gives_the_general_paths_arrays(seed: int, zeros: float) -> None:
    from bridge.check._compare import _finite_elementwise, _general_elementwise

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 6)), int(rng.integers(1, 7)))
    reference = rng.normal(size=shape) * (rng.random(shape) > zeros)  # exact zeros: relative error 0 there
    candidate = reference + rng.normal(size=shape) * 1e-3 * (rng.random(shape) > zeros)
    tolerance = np.abs(rng.normal(size=shape)) * 1e-3 * (rng.random(shape) > zeros)  # zero tolerances too
    fast = _finite_elementwise(reference, np.abs(reference - candidate), tolerance)
    general = _general_elementwise(reference, candidate, tolerance)
    for a, b in zip(fast, general, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), slab=st.integers(1, 12), special=st.floats(0.0, 0.3))
def test_comparing_in_slabs_gives_the_whole_arrays_statistics(seed: int, slab: int, special: float) -> None:
    import bridge._numerics as numerics
    from bridge.check._compare import compare

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, 4))))
    reference = np.array(rng.normal(size=shape))
    candidate = np.array(reference + rng.normal(size=shape) * 1e-3)
    tolerance = np.array(np.abs(rng.normal(size=shape)) * 1e-3)
    for array in (reference, candidate, tolerance):  # NaN, infinities and exact zeros in any of them
        values = np.array([np.nan, np.inf, -np.inf, 0.0])[rng.integers(0, 4, size=shape)]
        np.copyto(array, values, where=rng.random(shape) < special)
    whole = compare(reference, candidate, tolerance)
    original = numerics.SLAB
    numerics.SLAB = slab
    try:
        slabbed = compare(reference, candidate, tolerance)
        rms = numerics.finite_rms(reference)
    finally:
        numerics.SLAB = original
    for name, a, b in zip(whole._fields, whole, slabbed, strict=True):
        assert a == b or (a != a and b != b), f"{name}: {a} whole, {b} in slabs of {slab}"
    affine = numerics.Tolerance(1e-3, 1e-4)  # applied slab by slab: the statistics of its array
    for name, a, b in zip(
        whole._fields,
        compare(reference, candidate, affine),
        compare(reference, candidate, affine.of(reference)),
        strict=True,
    ):
        assert a == b or (a != a and b != b), f"{name}: {a} slab by slab, {b} from the whole array"
    finite = reference[np.isfinite(reference)]
    np.testing.assert_allclose(rms, np.sqrt(np.mean(np.square(finite))) if finite.size else 0.0, rtol=1e-12)


def test_a_nan_pixel_in_a_tree_is_reported_at_its_first_layer_and_the_other_rows_judged() -> None:
    """The Flax examples' MNIST CNN against its torch-way port (NCHW, torch.flatten): the NaN row's
    gradients are undefined and left out, the flatten's order is still found from the finite rows."""
    from tree_models import CNN, TorchCNN

    model = CNN()
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.load_into(model, variables, TorchCNN().eval(), inputs=x, channels_last=False)
    x[2, 3, 3, 0] = np.nan
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False)
    assert report.ok, str(report)
    assert report.settings["gradient_rows_dropped_nonfinite"] == 1
    assert report.nonfinite == {"flax": 1, "torch": 1}  # Conv_0 <-> conv1, the first layer
    assert all(row.isolated is None or row.isolated.ok for row in report.layers)  # Dense_0 reads torch's order
    assert len(report.gradients) == 9  # the input's and the 8 parameters'
    assert report.gradients[0].name == "input"
