"""Hugging Face's Flax BERT (removed in transformers v5) converted to a native torch module and checked,
and checked against Hugging Face's own PyTorch ``BertModel`` after ``load_into`` (matched by structure).

Run: ``python benchmarks/hf_flax_bert.py [layers hidden]`` with transformers < 5 installed (4.57.x has the
Flax models; not a dependency of this project). A BertConfig of that size is initialised locally (no
download), converted with ``bridge.to_torch(module, params, inputs, check=True)``, and both are compared.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bridge


def main() -> None:
    try:
        from transformers import BertConfig, BertModel, FlaxBertModel
    except ImportError:
        raise SystemExit("needs transformers < 5 ('transformers<5'), which still has the Flax models") from None
    layers, hidden = (int(v) for v in sys.argv[1:3]) if len(sys.argv) > 2 else (2, 64)
    config = BertConfig(
        vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=4 * hidden, max_position_embeddings=64, attn_implementation="eager",
    )  # fmt: skip
    bert = FlaxBertModel(config, seed=0)
    ids = np.random.default_rng(0).integers(1, 1000, size=(2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "position_ids": np.broadcast_to(np.arange(16, dtype=np.int32), ids.shape).copy(),
        "head_mask": None,
        "deterministic": True,
    }
    start = time.perf_counter()
    module = bridge.to_torch(bert.module, {"params": bert.params}, inputs, check=True)
    seconds = time.perf_counter() - start
    arrays = {k: torch.from_numpy(v) for k, v in inputs.items() if isinstance(v, np.ndarray)}
    out = module(**arrays)
    expected = bert.module.apply({"params": bert.params}, **inputs)
    difference = np.abs(out["last_hidden_state"].detach().numpy() - np.asarray(expected.last_hidden_state)).max()
    print(f"FlaxBertModel {layers} layers, hidden {hidden}: to_torch with check=True {seconds:.2f} s: EQUIVALENT")
    first_key = next(iter(module.state_dict()))
    print(f"  last_hidden_state max abs difference {difference:.2e}; state_dict keys like {first_key}")
    port = BertModel(config).eval()  # Hugging Face's own PyTorch port, its own names and random weights
    torch_inputs = {k: v.long() for k, v in arrays.items()}
    start = time.perf_counter()
    bridge.load_into(bert.module, {"params": bert.params}, port, inputs=inputs, torch_inputs=torch_inputs)
    report = bridge.check_equivalence(bert.module, {"params": bert.params}, port, inputs, torch_inputs=torch_inputs)
    seconds = time.perf_counter() - start
    verdict = "EQUIVALENT" if report.ok else f"NOT EQUIVALENT\n{report}"
    rows = len(report.gradients)
    print(f"transformers BertModel: load_into + check_equivalence {seconds:.2f} s, {rows} gradients: {verdict}")


if __name__ == "__main__":
    main()
