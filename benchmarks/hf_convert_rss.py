"""Peak memory of ``flax2torch convert-hf`` on a Flax checkpoint saved by transformers in 3 shards.

Run: ``python benchmarks/hf_convert_rss.py`` (needs transformers 4.57.x; about 2 GiB of temporary disk). A child
process saves a GPT-2 of about 630 MB (n_embd 1024, 12 layers, vocabulary 8192) with ``save_pretrained`` in 3
shards, and a 2-layer one of the same widths in 1 (the baseline: every library loaded, the same planning).
Then the peak resident set size (``ru_maxrss``) of ``convert-hf --no-check`` on each is measured three times,
and of the bare imports; the excess of the large one over the baseline (and over the imports alone, which
also counts the planning) is compared with the promise: at most two shards plus one layer.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.checkpoint_rss import peak_kib  # noqa: E402

SAVE = """
import sys, warnings
warnings.simplefilter("ignore")
import transformers as t
layers, shard = int(sys.argv[2]), sys.argv[3]
config = t.GPT2Config(vocab_size=8192, n_positions=256, n_embd=1024, n_layer=layers, n_head=16)
t.FlaxGPT2Model(config, seed=0).save_pretrained(sys.argv[1], max_shard_size=shard)
"""


def peak_mib(*command: str) -> float:
    """Peak RSS (MiB) of ``command`` run as a child of a fresh interpreter."""
    return peak_kib(*command) / 1024


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        subprocess.run([sys.executable, "-c", SAVE, str(big), "12", "230MB"], check=True)
        subprocess.run([sys.executable, "-c", SAVE, str(small), "2", "10GB"], check=True)
        shards = sorted(big.glob("flax_model-*.msgpack"))
        sizes = [p.stat().st_size / 2**20 for p in shards]
        layer = 1024 * 4096 * 4 / 2**20  # the largest tensor: an MLP kernel (1024, 4096) in float32
        runs = {"baseline (2 layers, 1 file)": small, f"{len(shards)} shards": big}
        peaks = {}
        for name, folder in runs.items():
            values = []
            for i in range(3):
                out = Path(tmp) / f"out-{len(peaks)}-{i}"
                command = ("-m", "bridge", "convert-hf", str(folder), str(out), "--no-check")
                values.append(peak_mib(sys.executable, *command))
            peaks[name] = statistics.median(values)
            print(f"{name}: peak RSS median {peaks[name]:.0f} MiB ({', '.join(f'{v:.0f}' for v in values)})")
        imports = ("-c", "import jax, torch, transformers, safetensors, bridge.hf, bridge.cli")
        bare = statistics.median(peak_mib(sys.executable, *imports) for _ in range(3))
        print(f"the libraries alone (imported, nothing run): peak RSS median {bare:.0f} MiB")
        excess = peaks[f"{len(shards)} shards"] - peaks["baseline (2 layers, 1 file)"]
        bound = 2 * max(sizes) + layer
        print(f"excess over the libraries alone: {peaks[f'{len(shards)} shards'] - bare:.0f} MiB")
        print(f"checkpoint: {sum(sizes):.0f} MiB in shards of {', '.join(f'{s:.0f}' for s in sizes)} MiB")
        print(f"excess over baseline: {excess:.0f} MiB; two largest shards plus one layer: {bound:.0f} MiB")
        print("within the promise" if excess <= bound else "OVER the promise")


if __name__ == "__main__":
    main()
