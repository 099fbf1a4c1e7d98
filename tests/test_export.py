"""``flax2torch export``: any Flax model as a standalone torch source file and its weights, which run in a
Python where JAX, Flax and this package cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from native_models import PoolCNN, TokenModel
from safetensors.numpy import load_file, save_file

import bridge
from bridge._tensors import to_tensor
from bridge.cli import main
from bridge.convert._export import export_source, load_export, write_export

TESTS = Path(__file__).parent

# Runs model.py with jax, flax and bridge made unimportable: the export must need torch (and safetensors) only.
RUNNER = """
import sys
for name in ("jax", "jaxlib", "flax", "bridge", "optax"):
    sys.modules[name] = None
import importlib.util
spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from safetensors.torch import load_file, save_file
model = getattr(module, sys.argv[2]).from_safetensors(sys.argv[3])
inputs = load_file(sys.argv[4])
save_file({"y": model(*(inputs[k] for k in sorted(inputs))).contiguous()}, sys.argv[5])
try:
    import jax
except ImportError:
    print("no jax")
"""


def _run_exported(folder: Path, class_name: str, inputs: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder / "model.py"), class_name, str(folder / "weights.safetensors"),
         str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no jax"
    return load_file(str(tmp_path / "out.safetensors"))["y"]


@pytest.mark.slow
def test_cli_export_runs_without_jax(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "export"
    assert main(["export", "--flax", "native_models:PoolCNN", "--input-shape", "2,12,12,3", str(out)]) == 0
    assert "check: EQUIVALENT" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["flax2torch-export.json", "model.py", "weights.safetensors"]
    source = (out / "model.py").read_text()
    assert "class PoolCNN(torch.nn.Module)" in source
    assert "import jax" not in source
    assert "bridge" not in source.replace("flax-torch-bridge", "")
    x = np.random.default_rng(3).normal(size=(2, 12, 12, 3)).astype(np.float32)
    model = PoolCNN()
    variables = model.init(jax.random.PRNGKey(0), x)  # the CLI's init: seed 0 on the example inputs' shapes
    expected = np.asarray(model.apply(variables, x))
    got = _run_exported(out, "PoolCNN", {"x": x}, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow
def test_exported_token_model_takes_integer_inputs(tmp_path: Path) -> None:
    model = TokenModel()
    tokens = np.random.default_rng(0).integers(0, 50, size=(3, 7)).astype(np.int32)
    variables = model.init(jax.random.PRNGKey(0), tokens)
    write_export(bridge.to_torch(model, variables, tokens), "TokenModel", tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    got = _run_exported(tmp_path, "TokenModel", {"tokens": tokens}, run)
    expected = np.asarray(model.apply(variables, tokens))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_export_keeps_bfloat16_weights(tmp_path: Path) -> None:
    model = PoolCNN()
    x = np.ones((1, 8, 8, 3), np.float32)
    variables = jax.tree.map(lambda a: a.astype(jax.numpy.bfloat16), model.init(jax.random.PRNGKey(0), x))
    xb = x.astype(jax.numpy.bfloat16)
    module = bridge.to_torch(model, variables, xb)
    source, weights = write_export(module, "PoolCNN", tmp_path)
    loaded = load_export(source, weights, "PoolCNN")
    assert loaded.get_parameter("Conv_0.weight").dtype == torch.bfloat16
    torch.testing.assert_close(loaded(to_tensor(xb)), module(to_tensor(xb)), rtol=0, atol=0)


def test_export_never_replaces_a_folder_that_is_not_an_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    args = ["export", "--flax", "native_models:PoolCNN", "--input-shape", "1,8,8,3", str(precious)]
    assert main(args) == 2
    assert main([*args, "--force"]) == 2
    assert "not an export folder" in capsys.readouterr().err
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]


def test_export_of_an_untranslatable_model_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "export"
    assert main(["export", "--flax", "test_native:_Outer", "--input-shape", "2,3", str(out)]) == 2
    err = capsys.readouterr().err
    assert "primitive 'sort'" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_source_is_plain_torch_and_reloads_the_same_function() -> None:
    model = PoolCNN()
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    source = export_source(bridge.to_torch(model, model.init(jax.random.PRNGKey(0), x), x), "PoolCNN")
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(
        line.split()[1].split(".")[0] in {"__future__", "contextlib", "math", "os", "torch", "collections", "typing"}
        for line in imports
    ), imports
    compile(source, "model.py", "exec")


def test_check_without_a_port_checks_the_conversion(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    assert main(["check", "--flax", "native_models:PoolCNN", "--input-shape", "2,12,12,3"]) == 0
    out = capsys.readouterr().out
    assert "EQUIVALENT" in out
    assert "Conv_0:FlaxConv2d" in out  # the converted module's own layers were compared call by call
