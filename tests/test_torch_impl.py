"""The hand-written torch twin: layer kinds, state-dict keys and shapes, and no JAX import."""

from __future__ import annotations

import subprocess
import sys

import torch

import torch_impl


def test_twin_is_a_sequential_of_linear_and_relu() -> None:
    twin = torch_impl.SeqMLP(3, 4, 2)
    assert isinstance(twin, torch.nn.Sequential)
    assert [type(m) for m in twin] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert {key: tuple(value.shape) for key, value in twin.state_dict().items()} == {
        "0.weight": (4, 3),
        "0.bias": (4,),
        "2.weight": (4, 4),
        "2.bias": (4,),
        "4.weight": (2, 4),
        "4.bias": (2,),
    }
    assert twin(torch.ones(5, 3)).shape == (5, 2)


def test_twin_does_not_import_jax() -> None:
    code = "import sys, torch_impl; torch_impl.SeqMLP(3, 4, 2); print('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
