"""``flax2torch convert-hf`` on tiny Hugging Face checkpoints saved by transformers 4.57 itself (``save_pretrained``,
sharded into 3 files): the folder it writes loads into transformers' PyTorch class with no missing or unexpected
key, holds what Hugging Face's own converter computes, and gives the Flax model's outputs. Needs transformers<5
(``nox -s hf``); nothing is downloaded."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from bridge.cli import main

transformers = pytest.importorskip("transformers")


def _bert(t: Any) -> tuple[Any, Any]:
    config = t.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    return config, t.FlaxBertForMaskedLM


def _gpt2(t: Any) -> tuple[Any, Any]:
    return t.GPT2Config(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4), t.FlaxGPT2LMHeadModel


MODELS = {"bert": _bert, "gpt2": _gpt2}


def _save_in_three_shards(name: str, folder: Path) -> Any:
    """A tiny model with random weights (biases and norms perturbed off 0/1), saved by transformers in 3 shards."""
    from transformers.modeling_flax_utils import flax_shard_checkpoint

    config, flax_class = MODELS[name](transformers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = flax_class(config, seed=0)
    rng = np.random.default_rng(1)
    model.params = _map(model.params, lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype))
    size = next(s for s in range(1_000, 10**7, 500) if len(flax_shard_checkpoint(model.params, s)[0]) == 3)
    model.save_pretrained(folder, max_shard_size=size)
    assert len(list(folder.glob("flax_model-*.msgpack"))) == 3
    return model


def _map(tree: Any, f: Any) -> Any:
    return {k: _map(v, f) if isinstance(v, dict) else np.asarray(f(np.asarray(v))) for k, v in tree.items()}


def _hf_reference(flax_model: Any, torch_class: Any) -> dict[str, torch.Tensor]:
    """Hugging Face's own converter's state dict for the same weights (the reference, not our code)."""
    from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

    torch.manual_seed(0)
    reference = torch_class(flax_model.config).eval()
    load_flax_weights_in_pytorch_model(reference, flax_model.params)
    return reference.state_dict()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_sharded_flax_checkpoint_becomes_the_pytorch_folder_transformers_loads(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "flax", tmp_path / "torch"
    flax_model = _save_in_three_shards(name, source)
    assert main(["convert-hf", str(source), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "check: EQUIVALENT" in printed
    assert "in 3 shards" in printed

    shards = sorted(out.glob("model-*.safetensors"))
    assert [p.name for p in shards] == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    for shard in shards:
        with safe_open(shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert {k for k, v in index["weight_map"].items() if v == shard.name} == set(f.keys())
    assert (out / "config.json").is_file()

    torch_class = getattr(transformers, flax_model.config.architectures[0])
    loaded, info = torch_class.from_pretrained(out, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    reference = _hf_reference(flax_model, torch_class)
    assert loaded.state_dict().keys() == reference.keys()
    for key, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, reference[key], rtol=0, atol=0, msg=key)

    ids = np.random.default_rng(2).integers(0, 99, size=(2, 7)).astype(np.int32)
    expected = np.asarray(flax_model(ids).logits)
    got = loaded.eval()(torch.from_numpy(ids.astype(np.int64))).logits.detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_wrong_layout_is_caught_by_the_check_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bridge.hf._convert as convert

    source, out = tmp_path / "flax", tmp_path / "torch"
    _save_in_three_shards("gpt2", source)
    right = convert.permuted

    def transposes_square_ones_again(array: np.ndarray, axes: Any) -> np.ndarray:  # a same-shape mistake
        laid = right(array, axes)
        return np.ascontiguousarray(laid.T) if laid.ndim == 2 and laid.shape[0] == laid.shape[1] else laid

    monkeypatch.setattr(convert, "permuted", transposes_square_ones_again)
    assert main(["convert-hf", str(source), str(out)]) == 1
    assert "NOT EQUIVALENT" in capsys.readouterr().out
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["flax"]  # no staging folder left either


def _hostile(folder: Path, how: str) -> str:
    """Damage a saved checkpoint ``how``; the words the error must contain."""
    index_file = folder / "flax_model.msgpack.index.json"
    index = json.loads(index_file.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    if how == "shard-outside":
        index["weight_map"] = {k: "../secret.msgpack" for k in index["weight_map"]}
        index_file.write_text(json.dumps(index))
        return "not a file name in this folder"
    if how == "missing-shard":
        (folder / first).unlink()
        return first
    if how == "truncated":
        data = (folder / first).read_bytes()
        (folder / first).write_bytes(data[: len(data) // 2])
        return "truncated"
    if how == "unknown-key":
        key = next(iter(index["weight_map"]))
        index["weight_map"]["transformer/extra/kernel"] = index["weight_map"][key]
        index_file.write_text(json.dumps(index))
        return "transformer/extra/kernel"
    if how == "no-config":
        (folder / "config.json").unlink()
        return "config.json"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["shard-outside", "missing-shard", "truncated", "unknown-key", "no-config"])
def test_a_damaged_or_hostile_folder_is_refused_in_one_line_and_nothing_is_written(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "flax", tmp_path / "torch"
    _save_in_three_shards("gpt2", source)
    says = _hostile(source, how)
    assert main(["convert-hf", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flax2torch convert-hf: error:"), err
    assert err.count("\n") == 1
    assert says in err
    assert not out.exists()


def test_force_replaces_an_unchanged_conversion_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "flax", tmp_path / "torch"
    _save_in_three_shards("gpt2", source)
    assert main(["convert-hf", str(source), str(out), "--no-check"]) == 0
    assert main(["convert-hf", str(source), str(out), "--no-check"]) == 2  # exists, no --force
    assert main(["convert-hf", str(source), str(out), "--no-check", "--force"]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["convert-hf", str(source), str(out), "--no-check", "--force"]) == 2
    assert "not a folder convert-hf wrote, unchanged" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["flax", "torch"]  # no staging folder left


def test_a_flax_class_that_fails_under_this_jax_is_named_not_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bridge.hf._convert as convert

    source, out = tmp_path / "flax", tmp_path / "torch"
    _save_in_three_shards("gpt2", source)

    def fails(model: Any) -> Any:  # as transformers' Flax T5 fails under jax 0.10 (jnp.clip(a_max=...))
        raise TypeError("clip() got an unexpected keyword argument 'a_max'")

    monkeypatch.setattr(convert, "flax_layout", fails)
    assert main(["convert-hf", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert "transformers' FlaxGPT2LMHeadModel cannot be traced with jax" in err
    assert "a_max" in err
    assert not out.exists()


def test_a_transformers_py_in_the_current_folder_never_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    source = tmp_path / "flax"
    _save_in_three_shards("gpt2", source)
    (tmp_path / "transformers.py").write_text(
        "import pathlib\npathlib.Path('ran').write_text('x')\nraise SystemExit(9)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-m", "bridge", "convert-hf", "flax", "torch", "--no-check"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "ran").exists()
    assert (tmp_path / "torch" / "model.safetensors.index.json").is_file()
