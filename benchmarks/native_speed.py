"""The converted module's speed against a hand-written torch port of the same model, and conversion time.

Run: ``python benchmarks/native_speed.py [layers width sequence batch]`` (default 12 768 128 4, about
85M parameters; ``2 128 32 2`` for a quick look). Prints, measured side by side in one process on CPU:
- forward time (no grad, median of repeats) of ``bridge.to_torch(model, variables, x)`` (a torch.fx
  GraphModule) and of a hand-written port (``nn.MultiheadAttention``, ``F.gelu``) filled by ``load_into``,
  and their ratio (target <= 1.2x); both on the same threads, alternated so neither gets a warmer cache;
- the same for the MNIST CNN of the Flax examples against its NCHW port;
- the time ``to_torch`` takes to convert the transformer (trace, translate, copy the weights).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tree_models import CNN, TorchCNN, TorchMLP  # noqa: E402

import bridge  # noqa: E402
from bridge._tensors import to_tensor  # noqa: E402


def transformer(layers: int, width: int) -> tuple[nn.Module, torch.nn.Module]:
    heads = 12 if width % 12 == 0 else 4

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):  # type: ignore[no-untyped-def]
            x = x + nn.MultiHeadDotProductAttention(num_heads=heads)(nn.LayerNorm()(x))
            return x + nn.Dense(width)(nn.gelu(nn.Dense(4 * width)(nn.LayerNorm()(x))))

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):  # type: ignore[no-untyped-def]
            for _ in range(layers):
                x = Block()(x)
            return nn.LayerNorm()(x)

    class TorchBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = torch.nn.LayerNorm(width, eps=1e-6)
            self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
            self.ln2 = torch.nn.LayerNorm(width, eps=1e-6)
            self.mlp = TorchMLP(width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class TorchModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.Sequential(*[TorchBlock() for _ in range(layers)])
            self.norm = torch.nn.LayerNorm(width, eps=1e-6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.blocks(x))

    return Model(), TorchModel()


def side_by_side(
    first: torch.nn.Module, second: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median forward seconds of each, alternated call by call after a warm-up."""
    times: tuple[list[float], list[float]] = ([], [])
    with torch.no_grad():
        for module, x in ((first, a), (second, b)):
            module(x)
        for _ in range(repeats):
            for i, (module, x) in enumerate(((first, a), (second, b))):
                start = time.perf_counter()
                module(x)
                times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    layers, width, sequence, batch = (int(v) for v in sys.argv[1:5]) if len(sys.argv) > 4 else (12, 768, 128, 4)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"transformer {layers}x{width}, sequence {sequence}, batch {batch}"
    )
    model, port = transformer(layers, width)
    x = np.random.default_rng(0).normal(size=(batch, sequence, width)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    count = sum(np.size(a) for a in jax.tree.leaves(variables))
    start = time.perf_counter()
    converted = bridge.to_torch(model, variables, x)
    seconds = time.perf_counter() - start
    print(f"to_torch of {count / 1e6:.1f}M parameters: {seconds:.2f} s (trace, translate, copy)")
    bridge.load_into(model, variables, port, inputs=x)
    port.eval()
    ours, theirs = side_by_side(converted, port, to_tensor(x), to_tensor(x), repeats=10)
    print(
        f"transformer forward: converted {ours * 1e3:.1f} ms, hand-written {theirs * 1e3:.1f} ms, "
        f"ratio {ours / theirs:.2f}x"
    )
    cnn, torch_cnn = CNN(), TorchCNN()
    images = np.random.default_rng(1).normal(size=(64, 28, 28, 1)).astype(np.float32)
    cnn_variables = cnn.init(jax.random.PRNGKey(0), images)
    converted_cnn = bridge.to_torch(cnn, cnn_variables, images)
    bridge.load_into(cnn, cnn_variables, torch_cnn, inputs=images, channels_last=False)
    nchw = to_tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    ours, theirs = side_by_side(converted_cnn, torch_cnn.eval(), to_tensor(images), nchw, repeats=30)
    print(
        f"MNIST CNN forward (batch 64): converted (NHWC, as Flax) {ours * 1e3:.2f} ms, "
        f"hand-written (NCHW) {theirs * 1e3:.2f} ms, ratio {ours / theirs:.2f}x"
    )


if __name__ == "__main__":
    main()
