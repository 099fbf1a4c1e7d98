"""Checkpoints: formats by suffix, bit-exact round trips, refusing unsafe or damaged files, atomic writes."""

from __future__ import annotations

import builtins
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import torch
from flax import serialization

import bridge
import flax_impl


def _seed_variables(hidden: int = 4, seed: int = 0) -> Any:
    model = flax_impl.SeqMLP(hidden, 2)
    return model, model.init(jax.random.PRNGKey(seed), np.ones(3, np.float32))


@pytest.fixture
def msgpack_file(tmp_path: Path) -> Path:
    _, variables = _seed_variables()
    path = tmp_path / "weights.msgpack"
    path.write_bytes(serialization.to_bytes(variables))
    return path


def _convert(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "convert", *args], capture_output=True, text=True, cwd=directory, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("middle", ["torch.safetensors", "torch.pt"])
def test_msgpack_round_trip_through_a_torch_file_is_byte_identical(msgpack_file: Path, middle: str) -> None:
    directory = msgpack_file.parent
    first = _convert(directory, msgpack_file.name, middle)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1].startswith("check: EQUIVALENT on 8 random inputs")
    second = _convert(directory, middle, "back.msgpack")
    assert second.returncode == 0, second.stderr
    assert (directory / "back.msgpack").read_bytes() == msgpack_file.read_bytes()


@pytest.mark.slow
def test_state_dict_in_the_torch_file_is_the_transposed_kernel(msgpack_file: Path) -> None:
    assert _convert(msgpack_file.parent, msgpack_file.name, "w.safetensors").returncode == 0
    state = bridge.load_checkpoint(msgpack_file.parent / "w.safetensors")
    variables = serialization.msgpack_restore(msgpack_file.read_bytes())
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    np.testing.assert_array_equal(state["2.weight"].numpy(), np.asarray(variables["params"]["Dense_1"]["kernel"]).T)


def test_library_round_trip_through_every_format(tmp_path: Path) -> None:
    model, variables = _seed_variables(hidden=6)
    state = bridge.to_state_dict(model, variables)
    for name in ("a.safetensors", "a.pt"):
        bridge.save_checkpoint(state, tmp_path / name)
        loaded = bridge.load_checkpoint(tmp_path / name)
        assert all(torch.equal(loaded[key], value) for key, value in state.items())
    for name in ("a.msgpack", "a.orbax"):
        bridge.save_checkpoint(variables, tmp_path / name)
        loaded = bridge.load_checkpoint(tmp_path / name, variables)
        jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.tree_util.tree_map(np.asarray, variables))
    back = bridge.from_state_dict(model, variables, bridge.load_checkpoint(tmp_path / "a.pt"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.tree_util.tree_map(np.asarray, variables))


@pytest.mark.slow
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (builtins.open, (str(marker), "w"))

    torch.save({"0.weight": Exploit()}, tmp_path / "evil.pt")
    with (tmp_path / "legacy.pt").open("wb") as handle:
        pickle.dump({"0.weight": Exploit()}, handle)
    assert not marker.exists()
    for name in ("evil.pt", "legacy.pt"):
        result = _convert(tmp_path, name, "out.msgpack")
        assert result.returncode == 2
        assert "refused: loading it would run code" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not marker.exists()
        assert not (tmp_path / "out.msgpack").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.msgpack", b"", "empty.msgpack: the file is empty"),
        ("empty.safetensors", b"", "empty.safetensors: the file is empty"),
        ("junk.msgpack", b"\xc1\xc1\xc1not msgpack", "junk.msgpack: not a valid Flax msgpack file, or truncated"),
        ("junk.pt", b"PK\x03\x04 not a zip", "junk.pt: not a readable torch file, or truncated"),
    ],
)
def test_damaged_files_give_one_line_and_exit_2(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    other = "out.pt" if name.endswith(".msgpack") else "out.msgpack"
    result = _convert(tmp_path, name, other)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"flax2torch convert: error: {message}" + result.stderr.strip().split(message, 1)[1]
    ]
    assert not (tmp_path / other).exists()


@pytest.mark.slow
def test_truncated_and_missing_files(msgpack_file: Path) -> None:
    directory = msgpack_file.parent
    assert _convert(directory, msgpack_file.name, "w.safetensors").returncode == 0
    data = (directory / "w.safetensors").read_bytes()
    (directory / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (directory / "cut.msgpack").write_bytes(msgpack_file.read_bytes()[:-7])
    for source, target, message in [
        ("cut.safetensors", "x.msgpack", "cut.safetensors: not a valid safetensors file, or truncated"),
        ("cut.msgpack", "x.pt", "cut.msgpack: not a valid Flax msgpack file, or truncated"),
        ("nothere.msgpack", "x.pt", "nothere.msgpack: no such file"),
        ("w.msgpack", "x.txt", "x.txt: unknown checkpoint suffix '.txt'"),
        ("w.msgpack", "x.msgpack", "convert goes between a Flax file"),
    ]:
        result = _convert(directory, source, target)
        assert result.returncode == 2, (source, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert message in lines[0]
        assert not (directory / target).exists()


@pytest.mark.slow
def test_a_shape_mismatch_names_the_first_differing_path_with_both_shapes(msgpack_file: Path) -> None:
    result = _convert(msgpack_file.parent, msgpack_file.name, "x.pt", "--hidden", "5")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"flax2torch convert: error: {msgpack_file.name}: params/Dense_0/bias has shape (4,), the model expects (5,)"
    )
    assert _convert(msgpack_file.parent, msgpack_file.name, "w.safetensors").returncode == 0
    result = _convert(msgpack_file.parent, "w.safetensors", "x.msgpack", "--hidden", "5")
    assert result.returncode == 2
    assert (
        "w.safetensors: does not fit the model: 0.weight gives params/Dense_0/kernel shape (3, 4), the model has (3, 5)"
        in result.stderr
    )


@pytest.mark.slow
def test_an_existing_destination_is_kept_unless_forced_and_untouched_by_a_failure(msgpack_file: Path) -> None:
    directory = msgpack_file.parent
    destination = directory / "keep.pt"
    destination.write_bytes(b"precious bytes")
    result = _convert(directory, msgpack_file.name, "keep.pt")
    assert result.returncode == 2
    assert "keep.pt: already exists; pass --force" in result.stderr
    refused = _convert(directory, msgpack_file.name, "keep.pt", "--force")  # not a torch checkpoint: kept
    assert refused.returncode == 2
    assert "keep.pt: is not a torch checkpoint" in refused.stderr
    torch.save({"old": torch.zeros(2)}, destination)
    precious = destination.read_bytes()
    failed = _convert(directory, msgpack_file.name, "keep.pt", "--force", "--hidden", "5")  # fails before writing
    assert failed.returncode == 2
    assert destination.read_bytes() == precious
    assert sorted(p.name for p in directory.iterdir()) == ["keep.pt", "weights.msgpack"]  # no temporary left
    assert _convert(directory, msgpack_file.name, "keep.pt", "--force").returncode == 0
    assert set(bridge.load_checkpoint(destination)) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    }


@pytest.mark.slow
def test_nan_weights_warn_or_fail_with_strict(tmp_path: Path) -> None:
    _, variables = _seed_variables()
    variables = jax.tree_util.tree_map(np.array, variables)
    variables["params"]["Dense_1"]["kernel"][0, 0] = np.nan
    (tmp_path / "nan.msgpack").write_bytes(serialization.to_bytes(variables))
    warned = _convert(tmp_path, "nan.msgpack", "nan.safetensors", "--no-check")
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.strip() == "flax2torch convert: warning: nan.msgpack: params/Dense_1/kernel holds NaN or Inf"
    strict = _convert(tmp_path, "nan.safetensors", "strict.msgpack", "--strict")
    assert strict.returncode == 2
    assert "nan.safetensors: 2.weight holds NaN or Inf (strict)" in strict.stderr
    assert not (tmp_path / "strict.msgpack").exists()
    with pytest.warns(bridge.NonFiniteWarning, match="params/Dense_1/kernel holds NaN"):
        bridge.load_checkpoint(tmp_path / "nan.msgpack")


def test_unsupported_dtypes_are_refused(tmp_path: Path) -> None:
    bridge.save_checkpoint({"0.weight": torch.zeros(2, 2, dtype=torch.complex64)}, tmp_path / "c.pt")
    with pytest.raises(
        bridge.CheckpointError, match=r"c\.pt: 0\.weight has dtype complex64, which the bridge does not convert"
    ):
        bridge.load_checkpoint(tmp_path / "c.pt")


def test_save_refuses_the_wrong_kind_of_object(tmp_path: Path) -> None:
    model, variables = _seed_variables()
    with pytest.raises(bridge.CheckpointError, match="holds a torch state dict"):
        bridge.save_checkpoint(variables, tmp_path / "x.safetensors")
    with pytest.raises(bridge.CheckpointError, match="holds Flax variables"):
        bridge.save_checkpoint(bridge.to_state_dict(model, variables), tmp_path / "x.msgpack")
    assert list(tmp_path.iterdir()) == []


def test_golden_vectors_match_the_current_libraries() -> None:
    """tests/golden/seed_model.safetensors was written by `flax2torch golden`: the seed model's variables,
    inputs and both outputs. Recomputed here. The weights are JAX's random numbers (integer arithmetic,
    then one transform): bit-exact on the versions in its metadata. The outputs are float sums whose last
    bits depend on the machine's kernels (FMA, blocking, threads): both frameworks' outputs, today's and
    the stored ones, and a plain float64 recomputation must agree within the checker's derived tolerance."""
    from safetensors import safe_open

    from bridge.check import output_tolerance
    from bridge.check._compare import compare

    path = Path(__file__).parent / "golden" / "seed_model.safetensors"
    with safe_open(str(path), framework="np") as golden:
        metadata = golden.metadata()
        stored = {key: golden.get_tensor(key) for key in golden.keys()}  # noqa: SIM118
    seed, (in_features, hidden, _, out) = int(metadata["seed"]), map(int, metadata["widths"].split("-"))
    model = flax_impl.SeqMLP(hidden, out)
    variables = model.init(jax.random.PRNGKey(seed), np.ones(in_features, np.float32))
    versions = f"golden written with jax {metadata['jax']}, flax {metadata['flax']}, torch {metadata['torch']}; now jax {jax.__version__}, torch {torch.__version__}"
    if metadata["jax"] == jax.__version__:
        for key, value in bridge.to_state_dict(model, variables).items():
            np.testing.assert_array_equal(
                value.numpy(), stored[f"state/{key}"], err_msg=f"JAX's init changed: {versions}"
            )
    x = stored["inputs"]
    stored_variables = bridge.from_state_dict(
        model,
        variables,
        {key.removeprefix("state/"): value for key, value in stored.items() if key.startswith("state/")},
    )
    reference, tolerance = output_tolerance(model, stored_variables, x)
    h = x.astype(np.float64)  # plain NumPy from the stored weights, independent of both frameworks
    for index in (0, 2, 4):
        h = h @ stored[f"state/{index}.weight"].T.astype(np.float64) + stored[f"state/{index}.bias"]
        h = np.maximum(h, 0) if index < 4 else h
    candidates = {
        "stored flax output": stored["outputs/flax"],
        "stored torch output": stored["outputs/torch"],
        "flax output now": np.asarray(model.apply(stored_variables, x)),
        "torch output now": bridge.run_torch(seed, x, hidden, out).numpy(),
        "float64 recomputation": h,
    }
    for name, values in candidates.items():
        result = compare(reference, values, tolerance)
        assert result.ok, (
            f"{name} differs from Flax's output on the stored weights: {result.mismatched} of {result.size} "
            f"elements outside the derived tolerance, max abs {result.max_abs:.3g} at {result.max_abs_index}, "
            f"err/tol {result.worst_ratio:.3g} ({versions})"
        )
