"""Writes that cannot lose data: staged output, --force limits, modes, leftovers, and kill -9 at every stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import torch
from flax import serialization

import bridge
import flax_impl
from bridge.io import replaceable
from bridge.io._atomic import (
    STAGES,
    LeftoverWarning,
    OutputExistsError,
    OutputRefusedError,
    atomic_output,
    clean_leftovers,
    staging_prefix,
)

ROOT = Path(__file__).resolve().parent.parent


def _tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (names relative to it) with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial") or ".tmp" in p.name)


class PlantedError(Exception):
    """A failure planted in the body of ``atomic_output``."""


def _write_then_fail(target: Path, directory: bool) -> None:
    with atomic_output(target, force=True, directory=directory) as temporary:
        if directory:
            temporary.mkdir()
            (temporary / "_METADATA").write_text("new")
        else:
            temporary.write_bytes(b"new")
        raise PlantedError  # e.g. the equivalence check failed


@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
def test_a_failure_after_writing_leaves_the_old_destination_and_no_temporary(tmp_path: Path, directory: bool) -> None:
    target = tmp_path / ("out.orbax" if directory else "out.pt")
    if directory:
        target.mkdir()
        (target / "_METADATA").write_text("old")
    else:
        torch.save({"old": torch.ones(1)}, target)
    before = _tree(tmp_path)
    with pytest.raises(PlantedError):
        _write_then_fail(target, directory)
    assert _tree(tmp_path) == before
    assert _leftovers(tmp_path) == []


def _write_folder(target: Path) -> None:
    with atomic_output(target, force=True, directory=True) as temporary:
        temporary.mkdir()
        (temporary / "_METADATA").write_text("new")


def test_an_interrupt_between_the_renames_of_a_folder_puts_the_old_one_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ck.orbax"
    target.mkdir()
    (target / "_METADATA").write_text("old")
    renames: list[str] = []
    real_rename = os.rename

    def rename(source: Any, destination: Any) -> None:
        renames.append(str(destination))
        if len(renames) == 2 and Path(destination) == target:  # Ctrl-C after the old one went aside
            raise KeyboardInterrupt
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _write_folder(target)
    assert (target / "_METADATA").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_force_replaces_only_a_checkpoint_of_the_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep")
    (tmp_path / "text.pt").write_text("keep")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.safetensors").write_bytes(b"x")
    cases: list[tuple[str, str, tuple[str, ...]]] = [
        ("notes", "is not an Orbax checkpoint folder", ()),
        ("text.pt", "is not a torch checkpoint", ()),
        (".", "is the current folder or a folder above it", ()),
        (str(tmp_path), "is the current folder or a folder above it", ()),
        ("..", "is the current folder or a folder above it", ()),
        ("src", "is the source src/w.safetensors or a folder above it", ("src/w.safetensors",)),
    ]
    for name, message, protect in cases:
        fmt: Any = "torch" if name.endswith(".pt") else "orbax"
        with (
            pytest.raises(OutputRefusedError, match=message),
            atomic_output(
                name, force=True, directory=fmt == "orbax", may_replace=replaceable(fmt), protect=protect
            ) as temporary,
        ):
            temporary.write_bytes(b"never")
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep"
    assert (tmp_path / "text.pt").read_text() == "keep"
    assert _leftovers(tmp_path) == []


def test_modes_follow_the_umask_or_the_replaced_file(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "new.pt") as temporary:
            temporary.write_bytes(b"x")
        assert (tmp_path / "new.pt").stat().st_mode & 0o777 == 0o640
        (tmp_path / "old.pt").write_bytes(b"PK\x03\x04")
        (tmp_path / "old.pt").chmod(0o644)
        with atomic_output(tmp_path / "old.pt", force=True, may_replace=replaceable("torch")) as temporary:
            temporary.write_bytes(b"y")
        assert (tmp_path / "old.pt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_dangling_link_is_replaced_only_with_force(tmp_path: Path) -> None:
    link = tmp_path / "out.pt"
    link.symlink_to(tmp_path / "missing.pt")
    with pytest.raises(OutputExistsError), atomic_output(link) as temporary:
        temporary.write_bytes(b"x")
    assert link.is_symlink()
    with atomic_output(link, force=True) as temporary:
        temporary.write_bytes(b"x")
    assert not link.is_symlink()
    assert link.read_bytes() == b"x"
    assert not (tmp_path / "missing.pt").exists()


def test_a_long_destination_name_gets_a_short_staging_name(tmp_path: Path) -> None:
    name = "w" * 240 + ".safetensors"  # 252 bytes: allowed; a staging name built from it would not be
    seen: list[str] = []
    with atomic_output(tmp_path / name) as temporary:
        seen.append(temporary.parent.name)
        temporary.write_bytes(b"x")
    assert len(seen[0].encode()) <= 255
    assert seen[0].startswith(staging_prefix(name))
    assert (tmp_path / name).read_bytes() == b"x"


def test_an_unwritable_folder_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)  # as a read-only folder does (root ignores chmod)
    with (
        pytest.raises(bridge.BridgeError, match=r"cannot write in the folder .* \(permission denied\)"),
        atomic_output(tmp_path / "x.pt") as temporary,
    ):
        temporary.write_bytes(b"x")


def test_a_destination_that_cannot_be_replaced_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.pt"
    target.write_bytes(b"PK\x03\x04 old")

    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "replace", denied)  # as an immutable file or a sticky folder does
    with pytest.raises(bridge.BridgeError, match=r"x\.pt: cannot replace it \(Operation not permitted\)"):
        _write_file(target)
    assert target.read_bytes() == b"PK\x03\x04 old"
    assert _leftovers(tmp_path) == []


def _write_file(target: Path) -> None:
    with atomic_output(target, force=True) as temporary:
        temporary.write_bytes(b"new")


def test_leftovers_of_a_dead_process_are_removed_and_an_aside_folder_put_back(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    target = tmp_path / "ck.orbax"
    staging = tmp_path / f"{staging_prefix(target)}{pid}.abc.partial"
    (staging / "old").mkdir(parents=True)
    (staging / "old" / "_METADATA").write_text("old")
    (staging / "new").mkdir()
    alive = tmp_path / f"{staging_prefix(target)}{os.getppid()}.def.partial"  # a live writer's: kept
    alive.mkdir()
    with pytest.warns(LeftoverWarning, match=r"put back .*ck\.orbax.*removed"):
        clean_leftovers(target)
    assert (target / "_METADATA").read_text() == "old"
    assert not staging.exists()
    assert alive.exists()


# kill -9 at each stage of a write, in a small subprocess (no JAX/torch import: fast)
_WRITER = """
import sys
from pathlib import Path
from bridge.io._atomic import atomic_output, stage
target, directory = Path(sys.argv[1]), sys.argv[2] == "folder"
with atomic_output(target, force=True, directory=directory) as temporary:
    if directory:
        temporary.mkdir()
        (temporary / "_METADATA").write_text("new")
        (temporary / "data").write_bytes(b"new" * 1000)
    else:
        temporary.write_bytes(b"new" * 1000)
    stage("written")
"""


def _old_or_new(target: Path, directory: bool) -> str:
    if directory:
        files = _tree(target)
        assert files in ({"_METADATA": b"old", "data": b"old" * 1000}, {"_METADATA": b"new", "data": b"new" * 1000})
        return files["_METADATA"].decode()
    data = target.read_bytes()
    assert data in (b"old" * 1000, b"new" * 1000)
    return data[:3].decode()


@pytest.mark.slow
@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize("when", STAGES)
def test_kill_at_any_stage_leaves_old_or_new_and_the_next_run_cleans(
    tmp_path: Path, when: str, directory: bool
) -> None:
    target = tmp_path / ("ck.orbax" if directory else "ck.pt")
    if directory:
        target.mkdir()
        (target / "_METADATA").write_text("old")
        (target / "data").write_bytes(b"old" * 1000)
    else:
        target.write_bytes(b"old" * 1000)
    env = {**os.environ, "FLAX2TORCH_TEST_KILL_AT": when, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _WRITER, str(target), "folder" if directory else "file"], env=env, timeout=60
    )
    if when == "aside" and not directory:
        assert result.returncode == 0  # files are replaced in one rename: there is no aside stage
    else:
        assert result.returncode == -signal.SIGKILL
    expected = "new" if when == "replaced" or (when == "aside" and not directory) else "old"
    if os.path.lexists(target):
        assert _old_or_new(target, directory) == expected
    else:
        assert when == "aside"  # between the two renames of a folder: the old one is complete, aside
        assert directory
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        clean_leftovers(target)  # what the next run does first
    assert _old_or_new(target, directory) == expected
    assert _leftovers(tmp_path) == []


# kill -9 during real conversions, one format pair each (the stage rotates), then the next run cleans up
def _seed_files(directory: Path) -> None:
    model = flax_impl.SeqMLP(4, 2)
    variables = model.init(jax.random.PRNGKey(0), np.ones(3, np.float32))
    (directory / "w.msgpack").write_bytes(serialization.to_bytes(variables))
    state = bridge.to_state_dict(model, variables)
    bridge.save_checkpoint(state, directory / "w.safetensors")
    bridge.save_checkpoint(state, directory / "w.pt")
    bridge.save_checkpoint(variables, directory / "w.orbax")
    other = model.init(jax.random.PRNGKey(1), np.ones(3, np.float32))  # the old destinations: other weights
    (directory / "old.msgpack").write_bytes(serialization.to_bytes(other))
    other_state = bridge.to_state_dict(model, other)
    bridge.save_checkpoint(other_state, directory / "old.safetensors")
    bridge.save_checkpoint(other_state, directory / "old.pt")
    bridge.save_checkpoint(other, directory / "old.orbax")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "suffix", "when"),
    [
        ("w.msgpack", "safetensors", "written"),
        ("w.orbax", "pt", "verified"),
        ("w.safetensors", "msgpack", "staged"),  # the streaming writer
        ("w.pt", "msgpack", "written"),
        ("w.safetensors", "orbax", "aside"),
        ("w.pt", "orbax", "replaced"),
    ],
)
def test_kill_during_a_conversion_keeps_the_old_checkpoint_or_the_new(
    tmp_path: Path, source: str, suffix: str, when: str
) -> None:
    _seed_files(tmp_path)
    target = tmp_path / f"old.{suffix}"
    before = _tree(target) if target.is_dir() else {"": target.read_bytes()}
    env = {**os.environ, "FLAX2TORCH_TEST_KILL_AT": when, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bridge", "convert", source, target.name, "--force"]
    killed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if when == "aside":
        assert not target.exists()  # between the renames: the old folder waits complete in the staging folder
    else:
        after = _tree(target) if target.is_dir() else {"": target.read_bytes()}
        assert (after == before) == (when != "replaced")
        if when == "replaced":  # the new one is complete: it reads back as the source's weights
            model = flax_impl.SeqMLP(4, 2)
            shapes = model.init(jax.random.PRNGKey(0), np.ones(3, np.float32))
            loaded = bridge.load_checkpoint(target, shapes)
            np.testing.assert_array_equal(loaded["params"]["Dense_0"]["kernel"], shapes["params"]["Dense_0"]["kernel"])
    assert _leftovers(tmp_path) != []
    if when == "aside":  # the next run, in full: it puts the old folder back, says so, then converts
        env.pop("FLAX2TORCH_TEST_KILL_AT")
        again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert again.stderr.startswith("flax2torch convert: note: old.orbax: an interrupted earlier run left")
        assert "put back" in again.stderr
    else:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            clean_leftovers(target)
    assert _leftovers(tmp_path) == []
