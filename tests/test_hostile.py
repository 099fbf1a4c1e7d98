"""Hostile and careless inputs to the CLI and export (issue 22's corpus): no file in the current folder runs,
no user data is replaced, no wrong artefact is written with exit 0."""

from __future__ import annotations

import copy
import enum
import importlib
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

import bridge
from bridge.cli import main
from bridge.convert import load_export, write_export

ROOT = Path(__file__).resolve().parent.parent

# The project as an editable install finds it: a finder consulted after every sys.path entry (the current
# folder, put last by the CLI, included), with the project's folder not on sys.path.
EDITABLE_RUN = """
import importlib.abc, importlib.machinery, sys
ROOT = sys.argv[1]
class Editable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if path is None and name in ("bridge", "flax_impl", "torch_impl"):
            return importlib.machinery.PathFinder.find_spec(name, [ROOT])
        return None
sys.path[:] = [p for p in sys.path if p != ROOT]
sys.meta_path.append(Editable())
from bridge.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def _user_module(folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """Write a user's module ``name.py`` into ``folder`` and make it importable, as --flax finds one."""
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))


def _run_editable(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-c", EDITABLE_RUN, str(ROOT), *args]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("command", [("check", "--seed", "0", "--n-inputs", "4"), ("golden", "g.safetensors")])
def test_the_projects_own_packages_in_the_current_folder_never_run(tmp_path: Path, command: tuple[str, ...]) -> None:
    for name in ("flax_impl", "torch_impl", "psutil"):
        (tmp_path / f"{name}.py").write_text(
            f"import pathlib\npathlib.Path('ran_{name}').write_text('x')\nraise SystemExit('shadowed {name} ran')\n"
        )
    result = _run_editable(tmp_path, *command)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("ran_*")), result.stderr


EXPORT = ("export", "--flax", "native_models:PoolCNN", "--input-shape", "1,8,8,3")


def _export(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    return main([*EXPORT, *args])


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_export_force_replaces_an_unchanged_export_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _export(monkeypatch, str(out)) == 0
    assert _export(monkeypatch, str(out), "--force") == 0  # its own earlier export: replaced
    with (out / "model.py").open("a") as source:
        source.write("# my own edit\n")
    before = _snapshot(out)
    capsys.readouterr()
    assert _export(monkeypatch, str(out), "--force") == 2
    assert "model.py changed since it was written" in capsys.readouterr().err
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "layout",
    [
        {"model.py": "class Mine: ...\n", "weights.safetensors": "not weights"},  # recognised by name alone before
        {"model.py": "x = 1\n", "weights.safetensors/": None, "weights.safetensors/keep.txt": "data"},
        {"model.py": "x = 1\n", "weights.safetensors": "w", "flax2torch-export.json": '{"format": "other"}'},
    ],
    ids=["hand-written", "weights-folder", "foreign-manifest"],
)
def test_export_force_never_replaces_a_folder_that_only_looks_like_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], layout: dict[str, str | None]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, text in layout.items():
        if text is None:
            (out / name).mkdir()
        else:
            (out / name).write_text(text)
    before = _snapshot(out)
    assert _export(monkeypatch, str(out), "--force") == 2
    assert "not an export folder" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_export_never_writes_into_the_users_own_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text((ROOT / "tests" / "native_models.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = _snapshot(package)
    args = ["export", "--flax", "mypkg.model:PoolCNN", "--input-shape", "1,8,8,3", "mypkg", "--force"]
    assert main(args) == 2
    assert "mypkg/model.py" in capsys.readouterr().err
    assert _snapshot(package) == before


class _CodeKey(str):
    """A str whose repr is code: put into generated source, it would run on every forward."""

    def __repr__(self) -> str:
        return "__import__('pathlib').Path('pwned').write_text('x')"

    def __hash__(self) -> int:
        return str.__hash__(self)


class _Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"

    def __lt__(self, other: _Colour) -> bool:  # JAX sorts dict keys
        return self.value < other.value


class _ShownAs(str):
    """A str key written as another text (``str()`` gives "b")."""

    def __str__(self) -> str:
        return "b"

    def __hash__(self) -> int:
        return str.__hash__(self)


class _KeyedOutputs(nn.Module):
    keys: tuple[Any, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[Any, jax.Array]:
        y = nn.Dense(3)(x)
        return {key: y * (i + 1) for i, key in enumerate(self.keys)}


@pytest.mark.parametrize(
    ("keys", "names"),
    [((_CodeKey("a"), "b"), ["a", "b"]), ((_Colour.RED, _Colour.BLUE), ["_Colour.BLUE", "_Colour.RED"])],
    ids=["str-subclass-repr-is-code", "enum-key"],
)
def test_output_keys_from_the_model_never_become_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: tuple[Any, ...], names: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    model = _KeyedOutputs(keys)
    x = np.ones((2, 4), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    module = bridge.to_torch(model, variables, x, check=True)
    out = module(torch.from_numpy(x))
    assert sorted(out) == names
    assert all(type(k) is str for k in out)
    source, weights = write_export(module, "Keyed", tmp_path)
    reloaded = load_export(source, weights, "Keyed")(torch.from_numpy(x))
    assert sorted(reloaded) == names
    assert not (tmp_path / "pwned").exists()


def test_output_keys_equal_as_text_are_refused() -> None:
    model = _KeyedOutputs((_ShownAs("a"), "b"))
    x = np.ones((2, 4), np.float32)
    with pytest.raises(bridge.UnsupportedModelError, match=r"several entries named \['b'\]"):
        bridge.to_torch(model, model.init(jax.random.PRNGKey(0), x), x)


class _Named(nn.Module):
    """Dense layers under the names given, each fed the input, summed."""

    names: tuple[str, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return sum(nn.Dense(3, name=name)(x) * (i + 1) for i, name in enumerate(self.names))


def _exported_outputs(module: torch.nn.Module, class_name: str, folder: Path, x: np.ndarray) -> np.ndarray:
    """The export of ``module`` imported on its own, run on ``x``."""
    source, weights = write_export(module, class_name, folder)
    return load_export(source, weights, class_name)(torch.from_numpy(x)).detach().numpy()


@pytest.mark.parametrize(
    "names",
    [
        ("a-b", "a b", "a_b"),  # clean to one Python name: each must keep its own weight
        ("__hidden", "ﬁ", "fi", "class", "forward", "graph", "training", "type", "meta", "_constant_0"),
    ],
    ids=["same-after-cleaning", "reserved-and-unicode"],
)
def test_layer_names_never_share_a_weight_or_break_the_export(tmp_path: Path, names: tuple[str, ...]) -> None:
    model = _Named(names)
    x = np.random.default_rng(14).standard_normal((2, 4)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(14), x)
    module = bridge.to_torch(model, variables, x, check=True)
    assert len(module.state_dict()) == 2 * len(names)
    expected = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(_exported_outputs(module, "Named", tmp_path, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("class_name", ["torch", "super", "math", "FlaxGroupNorm", "FlaxConv2d", "os", "ﬁx", "2x"])
def test_class_names_that_would_hide_a_name_the_file_uses_still_export(tmp_path: Path, class_name: str) -> None:
    model_class = type(class_name, (_Named,), {})
    model = model_class(("dense",))
    x = np.ones((2, 4), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    module = bridge.to_torch(model, variables, x)
    np.testing.assert_allclose(
        _exported_outputs(module, class_name, tmp_path, x), np.asarray(model.apply(variables, x)), rtol=1e-5, atol=1e-5
    )


class _RawParameters(nn.Module):
    """Parameters used between layers under names a module, its forward or its file already use."""

    names: tuple[str, ...] = ("value_", "bias", "weight", "forward", "training", "float", "self", "x", "torch")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = nn.Dense(4, name="value")(x)
        for i, name in enumerate(self.names):
            out = out * self.param(name, nn.initializers.normal(1.0), (4,)) + i
        return out


def test_parameters_named_as_the_code_names_things_convert_check_and_export(tmp_path: Path) -> None:
    model = _RawParameters()
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(3), x)
    module = bridge.to_torch(model, variables, x, check=True)
    assert len(module.state_dict()) == len(model.names) + 2
    expected = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(_exported_outputs(module, "Raw", tmp_path, x), expected, rtol=1e-5, atol=1e-5)


class _TakeOrFill(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, ids: jax.Array) -> jax.Array:
        return jnp.take(nn.Dense(3)(x), ids, axis=1, mode="fill", fill_value=np.float32(2.5))


def test_a_numpy_scalar_in_a_primitive_is_written_as_a_python_number(tmp_path: Path) -> None:
    model = _TakeOrFill()
    x, ids = np.ones((2, 4), np.float32), np.array([0, 2, 7], np.int32)  # 7 is out of range: filled
    variables = model.init(jax.random.PRNGKey(0), x, ids)
    module = bridge.to_torch(model, variables, (x, ids))
    assert "np." not in module.code
    got = module(torch.from_numpy(x), torch.from_numpy(ids)).detach().numpy()
    np.testing.assert_allclose(got, np.asarray(model.apply(variables, x, ids)), rtol=1e-6)
    assert (got[:, 2] == 2.5).all()


class _AddsARange(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(x) + jnp.arange(4.0)


def test_an_error_in_a_converted_forward_is_an_ordinary_traceback_with_nothing_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    x = np.ones((2, 4), np.float32)
    module = bridge.to_torch(_AddsARange(), {}, x)
    for each in (module, copy.deepcopy(module)):  # a copy is built again by fx: it must stay quiet too
        with pytest.raises(RuntimeError, match="size of tensor") as raised:
            each(torch.ones(2, 5))
        assert any("eval_with_key" in frame.filename for frame in traceback.extract_tb(raised.tb))
    assert capsys.readouterr().err == ""


class _NoParameters(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(x) * 2.0


def test_a_model_without_parameters_exports(tmp_path: Path) -> None:
    model = _NoParameters()
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    module = bridge.to_torch(model, {}, x)
    np.testing.assert_allclose(_exported_outputs(module, "NoParameters", tmp_path, x), np.tanh(x) * 2, rtol=1e-6)


def test_the_exported_class_is_an_ordinary_torch_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Named(("dense",))
    x = np.ones((2, 4), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    folder = tmp_path / "export"
    folder.mkdir()
    source, weights = write_export(bridge.to_torch(model, variables, x), "Named", folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # from_safetensors() looks beside the file, not in the current folder
    namespace: dict[str, Any] = {"__file__": str(source), "__name__": "exported"}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    plain = namespace["Named"]()  # as nn.Linear(): real tensors, then the weights loaded the ordinary way
    plain.load_state_dict(safetensors.torch.load_file(str(weights)))
    shortcut = namespace["Named"].from_safetensors()
    expected = np.asarray(model.apply(variables, x))
    for loaded in (plain, shortcut):
        assert not any(p.is_meta for p in loaded.parameters())
        np.testing.assert_allclose(loaded(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


class _ScaleOrBiasOnly(nn.Module):
    """A norm with its scale or its bias left out: torch's module holds the other as a constant."""

    kind: str
    use_scale: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(8)(x)
        options = {"use_scale": self.use_scale, "use_bias": not self.use_scale}
        if self.kind == "LayerNorm":
            return nn.LayerNorm(**options)(x)
        if self.kind == "GroupNorm":
            return nn.GroupNorm(num_groups=2, **options)(x)
        return nn.BatchNorm(use_running_average=True, **options)(x)


@pytest.mark.parametrize("use_scale", [False, True], ids=["bias-only", "scale-only"])
@pytest.mark.parametrize("kind", ["LayerNorm", "GroupNorm", "BatchNorm"])
def test_a_norm_with_scale_or_bias_left_out_converts_and_checks(kind: str, use_scale: bool) -> None:
    model = _ScaleOrBiasOnly(kind, use_scale)
    x = np.random.default_rng(15).standard_normal((3, 6)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(15), x)
    params = jax.tree.map(lambda a: a + 0.5, variables["params"])  # a bias or scale that is not its init value
    variables = {**variables, "params": params}
    module = bridge.to_torch(model, variables, x, check=True)  # raised NotEquivalentError: a false alarm
    np.testing.assert_allclose(
        module(torch.from_numpy(x)).detach().numpy(), np.asarray(model.apply(variables, x)), rtol=1e-5, atol=1e-5
    )


def test_a_tied_embedding_through_the_cli_is_equivalent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    args = ["check", "--flax", "tree_models:TiedLM", "--input-shape", "2,5", "--input-dtype", "int32"]
    assert main([*args, "--input-range", "0,11"]) == 0, capsys.readouterr().err
    assert "equivalence check: EQUIVALENT" in capsys.readouterr().out


def test_json_stays_parsable_when_user_code_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "chatty.py").write_text(
        "import flax.linen as nn\nprint('importing chatty')\n"
        "class Chatty(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x):\n"
        "        print('called')\n"
        "        return nn.Dense(3)(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "--flax", "chatty:Chatty", "--input-shape", "2,4", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is True
    assert "importing chatty" in captured.err


def _chain() -> tuple[nn.Module, Any, np.ndarray]:
    model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    x = np.ones((2, 3), np.float32)
    return model, model.init(jax.random.PRNGKey(0), x), x


class _NotATorchModule:
    pass


@pytest.mark.parametrize(
    ("port", "says"),
    [
        (None, "got NoneType"),
        ("my_port", "got str"),
        (lambda t: t, "got a function, not a module"),
        (nn.Dense(2), "got a Flax module: the port is the torch side"),
        (torch.nn.Linear, "got the class Linear: pass an instance"),
        (_NotATorchModule(), "got _NotATorchModule"),
    ],
    ids=["None", "str", "function", "flax-model", "class", "object"],
)
@pytest.mark.parametrize("function", ["check_equivalence", "load_into"])
def test_a_port_that_is_not_a_torch_module_is_refused_by_name(function: str, port: Any, says: str) -> None:
    model, variables, x = _chain()
    call = {
        "check_equivalence": lambda: bridge.check_equivalence(model, variables, port, x),
        "load_into": lambda: bridge.load_into(model, variables, port),
    }[function]
    with pytest.raises(bridge.InvalidArgumentError, match=rf"torch_module must be a torch.nn.Module, {says}"):
        call()


def test_bad_variables_mappings_state_dicts_and_paths_are_refused_by_name() -> None:
    model, variables, x = _chain()
    port = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    holed = {"params": {**variables["params"], "layers_0": {"kernel": None, "bias": None}}}
    with pytest.raises(bridge.InvalidArgumentError, match=r"variables holds NoneType at 'params/layers_0/bias'"):
        bridge.to_torch(model, holed, x)
    with pytest.raises(bridge.InvalidArgumentError, match=r"mapping must be a dict of Flax paths to torch names"):
        bridge.check_equivalence(model, variables, port, x, mapping=[("layers_0", "0")])  # type: ignore[arg-type]
    with pytest.raises(bridge.InvalidArgumentError, match=r"state_dict must be a mapping .* got list"):
        bridge.from_state_dict(model, variables, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(bridge.InvalidArgumentError, match=r"path must be a file path"):
        bridge.load_checkpoint(None)  # type: ignore[arg-type]
    wrong_rank = jax.tree.map(lambda a: a[None] if a.ndim == 2 else a, variables)
    for convert in (lambda: bridge.to_torch(model, wrong_rank, x), lambda: bridge.to_state_dict(model, wrong_rank)):
        with pytest.raises(
            bridge.LayerMismatchError, match=r"kernel has shape \(1, 3, 4\), where a Dense holds one of rank 2"
        ):
            convert()
    wide_bias = jax.tree.map(lambda a: a[None] if a.ndim == 1 else a, variables)
    with pytest.raises(bridge.LayerMismatchError, match=r"layer 0 \(Dense at 'layers_0'\): the variables do not fit"):
        bridge.to_torch(model, wide_bias)  # torch's own size mismatch, named by layer


def test_load_into_a_port_on_the_meta_device_refuses_rather_than_loading_nothing() -> None:
    model, variables, _ = _chain()
    with torch.device("meta"):
        port = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(bridge.InvalidArgumentError, match=r"tensors on the meta device \(0.weight\)"):
        bridge.load_into(model, variables, port)


NNX_MODELS = """
from flax import nnx

class Net(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))
"""


def test_an_nnx_model_is_accepted_by_check_and_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _user_module(tmp_path, monkeypatch, "nnx_models", NNX_MODELS)
    assert main(["check", "--flax", "nnx_models:Net", "--input-shape", "3,4"]) == 0, capsys.readouterr().err
    assert "equivalence check: EQUIVALENT" in capsys.readouterr().out
    assert main(["export", "--flax", "nnx_models:Net", "--input-shape", "3,4", str(tmp_path / "out")]) == 0
    assert "check: EQUIVALENT" in capsys.readouterr().out
    assert main(["check", "--flax", "nnx_models:Net", "--input-shape", "3,4", "--params", "w.msgpack"]) == 2
    assert "is an NNX model; it holds its own variables" in capsys.readouterr().err


def test_every_exported_file_follows_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = os.umask(0o027)
    try:
        assert _export(monkeypatch, str(tmp_path / "out")) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == {"model.py": 0o640, "weights.safetensors": 0o640, "flax2torch-export.json": 0o640}


DENSE_MODEL = """
import flax.linen as nn

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(5)(x)))
"""


@pytest.mark.parametrize(
    ("options", "code", "says"),
    [
        (("--input-dtype", "int32"), 0, None),  # converted: Flax promotes integer inputs to a Dense, and so must we
        (("--input-dtype", "bool"), 0, None),
        (("--input-dtype", "uint8"), 0, None),
        (("--input-dtype", "complex64"), 2, "--input-dtype complex64: inputs are drawn as floating point"),
        (("--input-dtype", "int64", "--input-range", "0,99999999999999999999"), 2, "int64 holds"),
    ],
    ids=["int32", "bool", "uint8", "complex64", "range-beyond-int64"],
)
def test_input_dtypes_and_ranges_are_converted_or_refused_with_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: tuple[str, ...],
    code: int,
    says: str | None,
) -> None:
    _user_module(tmp_path, monkeypatch, "dense_model", DENSE_MODEL)
    assert main(["check", "--flax", "dense_model:MLP", "--input-shape", "2,4", *options]) == code
    captured = capsys.readouterr()
    if says is None:
        assert "equivalence check: EQUIVALENT" in captured.out
    else:
        assert says in captured.err
        assert len(captured.err.strip().splitlines()) == 1


KEYWORD_MODEL = """
import flax.linen as nn

class Keywords(nn.Module):
    @nn.compact
    def __call__(self, **inputs):
        return nn.Dense(3)(inputs["my-input"]) + nn.Dense(3)(inputs["other input"])
"""


def test_keyword_inputs_that_are_no_python_names_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _user_module(tmp_path, monkeypatch, "keyword_model", KEYWORD_MODEL)
    shapes = ["--input-shape", "my-input=2,4", "--input-shape", "other input=2,5"]
    assert main(["check", "--flax", "keyword_model:Keywords", *shapes]) == 0, capsys.readouterr().err
    assert "equivalence check: EQUIVALENT" in capsys.readouterr().out


def test_load_into_a_converted_module_takes_keyword_inputs_that_are_no_python_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_into`` names the port's keyword arguments as the check does (``my-input`` is ``my_input`` there)."""
    _user_module(tmp_path, monkeypatch, "keyword_load_model", KEYWORD_MODEL)
    model = importlib.import_module("keyword_load_model").Keywords()
    inputs = {"my-input": np.ones((2, 4), np.float32), "other input": np.ones((2, 5), np.float32)}
    port = bridge.to_torch(model, model.init(jax.random.PRNGKey(0), **inputs), inputs)
    other = model.init(jax.random.PRNGKey(1), **inputs)
    bridge.load_into(model, other, port, inputs=inputs)
    assert bridge.check_equivalence(model, other, port, inputs).ok


WIDE_MODEL = """
import flax.linen as nn
import jax.numpy as jnp

class Wide(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.broadcast_to(x[:, :, None], (x.shape[0], x.shape[1], 2_000_000)) * 2.0  # 32e9 values
        return nn.Dense(2)(h.sum(-1))
"""


@pytest.mark.parametrize(
    ("name", "source", "spec", "shape", "says"),
    [
        ("dense_model", DENSE_MODEL, "MLP", "10000000,10000000", "the --input-shape 10000000,10000000 input needs"),
        ("wide_model", WIDE_MODEL, "Wide", "400,40", "Wide's intermediate values on these inputs"),  # 10 weights
    ],
    ids=["huge-input", "huge-activations"],
)
def test_work_beyond_memory_is_refused_before_anything_is_drawn_or_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    source: str,
    spec: str,
    shape: str,
    says: str,
) -> None:
    _user_module(tmp_path, monkeypatch, name, source)
    assert main(["check", "--flax", f"{name}:{spec}", "--input-shape", shape]) == 2
    assert says in capsys.readouterr().err


def test_every_safetensors_written_says_it_holds_torch_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flax import serialization
    from safetensors import safe_open

    import flax_impl

    variables = flax_impl.SeqMLP(4, 2).init(jax.random.PRNGKey(0), np.ones(3, np.float32))  # the seed model's
    (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(variables))
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "w.msgpack", "w.safetensors"]) == 0
    assert main(["golden", "g.safetensors"]) == 0
    assert _export(monkeypatch, "out") == 0
    for path in ("w.safetensors", "g.safetensors", "out/weights.safetensors"):
        with safe_open(str(tmp_path / path), framework="pt") as written:
            assert (written.metadata() or {}).get("format") == "pt", path  # Hugging Face's loaders expect it


class _CodeFloat(float):
    """A float written as code wherever it is formatted."""

    def __format__(self, spec: str) -> str:
        return "__import__('pathlib').Path('pwned').write_text('x')"

    __repr__ = __str__ = lambda self: self.__format__("")  # type: ignore[assignment]


class _Normed(nn.Module):
    epsilon: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(epsilon=self.epsilon)(nn.Dense(4)(x))


def test_a_layer_option_whose_text_is_code_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = _Normed(_CodeFloat(1e-6))
    x = np.ones((2, 3), np.float32)
    module = bridge.to_torch(model, model.init(jax.random.PRNGKey(0), x), x)
    with pytest.raises(bridge.UnsupportedModelError, match=r"LayerNorm_0: its options .* are not plain literals"):
        write_export(module, "Normed", tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "model.py").exists() or "pwned" not in (tmp_path / "model.py").read_text()


LOOPS = """
import flax.linen as nn

class Loops(nn.Module):
    @nn.compact
    def __call__(self, x):
        while True:
            pass

def at_import():
    raise AssertionError("never reached")
"""


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--flax", "loops_at_import:at_import", "--input-shape", "2,3"],
        ["check", "--flax", "loops:Loops", "--input-shape", "2,3"],
        ["export", "OUT", "--flax", "loops:Loops", "--input-shape", "2,3"],
    ],
    ids=["check-import", "check-init", "export"],
)
def test_timeout_stops_user_code_that_never_returns_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    _user_module(tmp_path, monkeypatch, "loops", LOOPS)
    _user_module(tmp_path, monkeypatch, "loops_at_import", "while True:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    assert main([*args, "--timeout", "1.5"]) == 124
    err = capsys.readouterr().err
    assert err.startswith(f"flax2torch {args[0]}: out of time after --timeout 1.5 s; no verdict"), err
    assert err.count("\n") == 1
    assert {k for k in _snapshot(tmp_path) if "__pycache__" not in k} == {k for k in before if "__pycache__" not in k}


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_no_positive_number_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "--timeout", value])
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_a_command_within_its_timeout_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--seed", "0", "--n-inputs", "4", "--timeout", "600"]) == 0
    assert "EQUIVALENT" in capsys.readouterr().out


CHAIN_MODEL = """
import flax.linen as nn
import torch

def flax_model():
    return nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])

def port():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
"""


def test_a_chains_mapping_is_used_or_refused_never_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--mapping`` with a chain and no ``--input-shape`` pairs its positions as given (it was dropped before)."""
    _user_module(tmp_path, monkeypatch, "chain_mapping_model", CHAIN_MODEL)
    check = ["check", "--flax", "chain_mapping_model:flax_model", "--in-features", "5", "--no-grads"]
    right, swapped = tmp_path / "right.json", tmp_path / "swapped.json"
    right.write_text(json.dumps({"layers_0": "0", "layers_2": "2"}))
    swapped.write_text(json.dumps({"layers_0": "2", "layers_2": "0"}))
    port = ["--torch", "chain_mapping_model:port"]
    assert main([*check, *port, "--mapping", str(right)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main([*check, *port, "--mapping", str(swapped)]) == 1
    assert "NOT EQUIVALENT" in capsys.readouterr().out
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"layers_9": "0"}))
    assert main([*check, *port, "--mapping", str(typo)]) == 2  # a usage error, not a verdict: nothing compared
    assert "'layers_9' -> '0' selects 0 Flax and 1 torch calls" in capsys.readouterr().err
    assert main([*check, "--mapping", str(right)]) == 2  # nothing to map onto
    assert "--mapping describes the torch port: give --torch MODULE:ATTR" in capsys.readouterr().err


class _TwoSpellings(nn.Module):
    """Keyword inputs whose Python spellings collide: ``my-input`` can only be ``my_input``, which is taken."""

    @nn.compact
    def __call__(self, **inputs: Any) -> Any:
        return nn.Dense(3)(inputs["my-input"]) - nn.Dense(3)(inputs["my_input"])


def test_inputs_whose_python_names_collide_convert_and_keep_their_own_names() -> None:
    model = _TwoSpellings()
    inputs = {"my-input": np.ones((2, 4), np.float32), "my_input": np.full((2, 5), 2.0, np.float32)}
    variables = model.init(jax.random.PRNGKey(0), **inputs)
    port = bridge.to_torch(model, variables, inputs)  # a SyntaxError (duplicate argument) before
    assert port.meta["flax_input_names"] == {"my-input": "my_input_1", "my_input": "my_input"}
    expected = model.apply(variables, **inputs)
    got = port(my_input_1=torch.from_numpy(inputs["my-input"]), my_input=torch.from_numpy(inputs["my_input"]))
    assert bridge.check_equivalence(model, variables, port, inputs).ok
    assert got.shape == expected.shape
