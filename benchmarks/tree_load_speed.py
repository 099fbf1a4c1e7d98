"""The cost of ``load_into`` on a deep model matched as a call tree, against Flax's own trace of it.

Run: ``python benchmarks/tree_load_speed.py [layers ...]`` (default 500 1000 2000). For each depth: a compact
Flax module of that many ``nn.Dense(16)`` (relu between them, a residual every 4 layers) and a torch port with
its own names, nested (``stages.N.fc_in``, ...); prints, warm, the best of 3:
- ``jax.eval_shape(model.apply, variables, x)``: Flax's own trace of the model, the least any tool that
  looks at the model's calls must spend;
- copying the bytes: every Flax array laid out for torch and copied into the port's tensor (the loader's
  floor, with the mapping known in advance);
- ``bridge.load_into(model, variables, port, inputs=x)``: capture both call trees, match, check, copy;
- the ratio load_into / (eval_shape + copy) (target <= 1.5x), which must not grow with the depth.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bridge

WIDTH = 16
STAGE = 4  # layers per residual stage


class Deep(nn.Module):
    """``layers`` Dense layers in one compact module: Dense_0 ... Dense_{layers-1}, flat."""

    layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        skip = x
        for i in range(self.layers):
            x = nn.Dense(WIDTH)(x)
            if i % STAGE == STAGE - 1:
                x = skip = x + skip
            else:
                x = nn.relu(x)
        return x


class Stage(torch.nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.fc_in = torch.nn.Linear(WIDTH, WIDTH)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH) for _ in range(size - 2))
        self.fc_out = torch.nn.Linear(WIDTH, WIDTH)
        self.residual = size == STAGE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc_in(x))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        h = self.fc_out(h)
        return x + h if self.residual else torch.relu(h)


class TorchDeep(torch.nn.Module):
    """The port: stages of 4 Linear layers (a residual around each), nested names of its own."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        sizes = [STAGE] * (layers // STAGE) + ([layers % STAGE] if layers % STAGE else [])
        self.stages = torch.nn.ModuleList(Stage(size) for size in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def best(function: Callable[[], Any], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(layers: int) -> tuple[float, float, float]:
    """(eval_shape, copy, load_into) seconds for a model of ``layers`` Dense layers, warm."""
    assert layers % STAGE == 0, "whole stages only (the port's residuals)"
    x = np.random.default_rng(0).standard_normal((2, WIDTH)).astype(np.float32)
    model = Deep(layers)
    variables = jax.tree_util.tree_map(np.array, model.init(jax.random.PRNGKey(0), x))
    port = TorchDeep(layers).eval()
    linears = [m for m in port.modules() if isinstance(m, torch.nn.Linear)]  # call order = definition order here
    params = variables["params"]

    def trace() -> None:
        jax.eval_shape(model.apply, variables, x)

    def copy_bytes() -> None:
        with torch.no_grad():
            for i, linear in enumerate(linears):
                layer = params[f"Dense_{i}"]
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(layer["kernel"].T)))
                linear.bias.copy_(torch.from_numpy(layer["bias"]))

    def load() -> None:
        bridge.load_into(model, variables, port, inputs=x)

    load()  # warm, and the result checked once
    first = linears[-1]
    np.testing.assert_array_equal(first.weight.detach().numpy(), params[f"Dense_{layers - 1}"]["kernel"].T)
    out = port(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, np.asarray(model.apply(variables, x)), rtol=1e-4, atol=1e-4)
    trace()
    copy_bytes()
    return best(trace), best(copy_bytes), best(load)


def main() -> None:
    depths = [int(a) for a in sys.argv[1:]] or [500, 1000, 2000]
    print("layers  eval_shape  copy bytes  load_into  ratio (target <= 1.5x)")
    for layers in depths:
        traced, copied, loaded = measure(layers)
        ratio = loaded / (traced + copied)
        print(f"{layers:6d}  {traced:8.2f} s  {copied:8.3f} s  {loaded:7.2f} s  {ratio:.2f}x")


if __name__ == "__main__":
    main()
