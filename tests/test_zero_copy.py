"""to_torch(copy=False): the torch weights are views of the Flax buffers, and the outputs still match."""

from __future__ import annotations

from pathlib import Path

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


def test_copy_false_outputs_match_the_copied_model() -> None:
    """Views and contiguous weights run different kernels (their last bits may differ): both are checked
    equivalent, and agree with each other within the derived tolerance of the output."""
    from bridge.check import output_tolerance
    from bridge.check._compare import compare

    model, variables = _model_and_variables()
    x = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    shared = bridge.to_torch(model, variables, copy=False)
    copied = bridge.to_torch(model, variables)
    reference, tolerance = output_tolerance(model, variables, x)
    with torch.no_grad():
        for module in (shared, copied):
            assert compare(reference, module(torch.from_numpy(x)).numpy(), tolerance).ok
    assert bridge.check_equivalence(model, variables, shared).ok


def test_copied_weights_are_ordinary_contiguous_tensors(tmp_path: Path) -> None:
    """copy=True gives torch's layout in fresh contiguous memory: safetensors saves it, and the module is
    bit for bit the function of the same weights loaded into a hand-written port (same kernels, same layout)."""
    from safetensors.torch import load_file, save_file

    import torch_impl

    model, variables = _model_and_variables()
    copied = bridge.to_torch(model, variables)
    for name, tensor in copied.state_dict().items():
        assert tensor.is_contiguous(), name
    save_file(copied.state_dict(), str(tmp_path / "w.safetensors"))
    assert load_file(str(tmp_path / "w.safetensors")).keys() == copied.state_dict().keys()
    port = bridge.load_into(model, variables, torch_impl.SeqMLP(16, 32, 8))
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(10, 16)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(copied(x), port(x))


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
