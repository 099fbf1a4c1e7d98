"""The cost of checking a transformer as a call tree against running both frameworks once.

Run: ``python benchmarks/tree_check_speed.py [layers width sequence batch]`` (default 12 768 128 4, about
85M parameters; ``2 128 32 2`` for a quick look). Prints, side by side in one process:
- the baseline: Flax forward and backward (``jax.grad`` of the summed output, jitted, warm) plus torch
  forward and backward of the port;
- ``bridge.check_equivalence`` (per-call comparison, end to end and isolated, and gradients), warm;
- the ratio of the two (target <= 3x), and peak resident memory of each in a child process (target <= 2x).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETUP = """
import sys, numpy as np, jax, jax.numpy as jnp, torch, flax.linen as nn
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
import bridge
from tree_models import TorchMLP
layers, width, sequence, batch = map(int, sys.argv[2:6])

class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(num_heads=12 if width % 12 == 0 else 4)(nn.LayerNorm()(x))
        return x + nn.Dense(width)(nn.gelu(nn.Dense(4 * width)(nn.LayerNorm()(x))))

class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(layers):
            x = Block()(x)
        return nn.LayerNorm()(x)

class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        heads = 12 if width % 12 == 0 else 4
        self.ln1 = torch.nn.LayerNorm(width, eps=1e-6)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(width, eps=1e-6)
        self.mlp = TorchMLP(width)
    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))

class TorchModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.Sequential(*[TorchBlock() for _ in range(layers)])
        self.norm = torch.nn.LayerNorm(width, eps=1e-6)
    def forward(self, x):
        return self.norm(self.blocks(x))

x = np.random.default_rng(0).standard_normal((batch, sequence, width)).astype(np.float32)
model = Model()
variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
port = bridge.load_into(model, variables, TorchModel().eval(), inputs=x)
grad = jax.jit(jax.grad(lambda p, x: model.apply({"params": p}, x).sum()))

def baseline():
    jax.block_until_ready(grad(variables["params"], x))
    out = port(torch.from_numpy(x))
    out.sum().backward()
    port.zero_grad()

def check():
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
"""

MEMORY = (
    SETUP
    + """
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
{call}()
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM")))
"""
)


def main() -> None:
    sizes = sys.argv[1:5] if len(sys.argv) >= 5 else ["12", "768", "128", "4"]
    namespace: dict[str, object] = {}
    sys.argv = [sys.argv[0], str(ROOT), *sizes]
    exec(SETUP, namespace)  # the benchmark's own setup, shared with the memory probes
    baseline, check = namespace["baseline"], namespace["check"]
    baseline()  # compile and warm both
    start = time.perf_counter()
    check()
    first = time.perf_counter() - start
    base_times, check_times = [], []
    for _ in range(2):
        start = time.perf_counter()
        baseline()  # type: ignore[operator]
        base_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        check()  # type: ignore[operator]
        check_times.append(time.perf_counter() - start)
    base, checked = statistics.median(base_times), statistics.median(check_times)
    parameters = sum(p.numel() for p in namespace["port"].parameters())  # type: ignore[attr-defined]
    print(f"transformer {' '.join(sizes)} (layers width sequence batch), {parameters / 1e6:.1f}M parameters")
    print(f"  both frameworks forward + backward (warm)   {base:.2f} s")
    print(f"  check_equivalence with gradients (warm)     {checked:.2f} s (first call {first:.2f} s)")
    print(f"  ratio {checked / base:.1f}x (target <= 3x)")
    peaks = {}
    for call in ("baseline", "check"):
        probe = subprocess.run(
            [sys.executable, "-c", MEMORY.replace("{call}", call), str(ROOT), *sizes],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[call] = int(probe.stdout.split()[-1])
    print(
        f"  peak memory: baseline {peaks['baseline'] / 2**30:.2f} GiB, check {peaks['check'] / 2**30:.2f} GiB: "
        f"{peaks['check'] / peaks['baseline']:.1f}x (target <= 2x)"
    )


if __name__ == "__main__":
    main()
