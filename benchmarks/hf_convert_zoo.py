"""``convert-hf`` over the Hugging Face zoo (tests/zoo/hf_zoo.py): each architecture's Flax model, its weights
perturbed, saved by transformers itself (``save_pretrained``, 3 shards where the model allows), converted by
``bridge.hf.convert_hf_checkpoint`` with its check, then loaded by transformers' PyTorch class and compared
tensor by tensor with Hugging Face's own converter. One row per architecture: "ok", "refused: ..." (nothing
written, with the reason) or "WRONG: ..." (written and wrong: the outcome that must never happen).

Run: ``python benchmarks/hf_convert_zoo.py [ARCH ...]`` with transformers < 5 installed (a few minutes).
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.zoo import hf_zoo  # noqa: E402


def _shard_size(params: Any) -> int:
    from transformers.modeling_flax_utils import flax_shard_checkpoint

    for size in range(1_000, 10**8, 1_000):
        if len(flax_shard_checkpoint(params, size)[0]) <= 3:
            return size
    return 10**9


def row(name: str, folder: Path) -> str:
    import torch

    from bridge import BridgeError
    from bridge.hf import convert_hf_checkpoint

    case = hf_zoo.build(name)
    keyed = "batch_stats" in case.variables
    model = case.flax_model
    model.params = dict(case.variables) if keyed else case.variables["params"]
    source, out = folder / f"{name}-flax", folder / f"{name}-torch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(source, max_shard_size=_shard_size(model.params))
    shards = len(list(source.glob("flax_model*.msgpack")))
    try:
        result = convert_hf_checkpoint(source, out)
    except BridgeError as e:
        return f"refused: {type(e).__name__}: {str(e).splitlines()[0][:150]} ({shards} shards)"
    torch_class = type(case.make_torch())
    loaded, info = torch_class.from_pretrained(out, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    reference = case.make_reference().state_dict()
    state = loaded.state_dict()
    differ = [k for k in reference if k not in state or not torch.equal(state[k].float(), reference[k].float())]
    if problems or differ:
        return f"WRONG: loading info {problems}, {len(differ)} tensors differ from HF's converter (first {differ[:1]})"
    return f"ok ({shards} shards, {result.tensors} tensors, {len(result.by_name)} by name)"


def main() -> None:
    names = sys.argv[1:] or list(hf_zoo.ARCHITECTURES)
    print("| arch | convert-hf, checked, loaded, tensors as HF's converter |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            start = time.perf_counter()
            try:
                cell = row(name, Path(tmp))
            except Exception as e:  # a bug of ours: say so in the row
                cell = f"raises: {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
            print(f"| {name} | {cell} ({time.perf_counter() - start:.0f} s) |", flush=True)


if __name__ == "__main__":
    main()
