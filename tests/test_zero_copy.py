"""to_torch(copy=False): the torch weights are views of the Flax buffers, and the outputs still match."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import bridge
import flax_impl


def _model_and_variables() -> tuple[flax_impl.SeqMLP, dict]:  # type: ignore[type-arg]
    model = flax_impl.SeqMLP(hidden=32, out=8)
    return model, model.init(jax.random.PRNGKey(0), np.ones(16, np.float32))


def test_copy_false_shares_memory_with_the_flax_kernels() -> None:
    model, variables = _model_and_variables()
    shared = bridge.to_torch(model, variables, copy=False)
    for position, name in ((0, "Dense_0"), (2, "Dense_1"), (4, "Dense_2")):
        kernel = variables["params"][name]["kernel"]
        weight = shared[position].weight
        assert weight.data_ptr() == kernel.unsafe_buffer_pointer()
        assert weight.stride() == (1, kernel.shape[1])  # the transpose is a stride change, not a copy
        assert shared[position].bias.data_ptr() == variables["params"][name]["bias"].unsafe_buffer_pointer()


def test_copy_false_outputs_match_the_copied_model_bit_for_bit() -> None:
    model, variables = _model_and_variables()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32))
    shared = bridge.to_torch(model, variables, copy=False)
    copied = bridge.to_torch(model, variables)
    torch.testing.assert_close(shared(x), copied(x), rtol=0, atol=0)
    assert bridge.check_equivalence(model, variables, shared).ok


def test_default_copy_owns_its_memory() -> None:
    model, variables = _model_and_variables()
    copied = bridge.to_torch(model, variables)
    assert copied[0].weight.data_ptr() != variables["params"]["Dense_0"]["kernel"].unsafe_buffer_pointer()
    with torch.no_grad():
        copied[0].weight.zero_()
    assert np.abs(np.asarray(variables["params"]["Dense_0"]["kernel"])).sum() > 0


def test_copy_false_refuses_read_only_numpy_buffers() -> None:
    model, variables = _model_and_variables()
    frozen = jax.tree_util.tree_map(np.asarray, variables)  # NumPy views of JAX buffers are read-only
    with pytest.raises(
        bridge.InvalidArgumentError, match="read-only NumPy array cannot be shared with torch; use copy=True"
    ):
        bridge.to_torch(model, frozen, copy=False)
    writable = jax.tree_util.tree_map(np.array, variables)
    shared = bridge.to_torch(model, writable, copy=False)
    assert shared[0].weight.data_ptr() == writable["params"]["Dense_0"]["kernel"].__array_interface__["data"][0]
