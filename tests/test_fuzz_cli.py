"""Fuzzing the file readers and the command line: every damaged file, special file, odd option and
misbehaving user module ends as one clean error line (exit 2), never a traceback, a hang or exit 3.

The corpus is generated here from small valid checkpoints (nothing large is committed).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import torch
from conftest import run_flax2torch
from flax import serialization

import bridge
import flax_impl
from bridge.cli import main

ROOT = Path(__file__).resolve().parent.parent
CASE_SECONDS = 30  # far above any case here (well under a second each): reaching it means a hang


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail a case that runs past ``seconds`` (SIGALRM: only in the main thread; elsewhere unguarded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def hang(signum: int, frame: Any) -> None:
        raise TimeoutError(f"hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _model_and_variables() -> tuple[Any, Any]:
    model = flax_impl.SeqMLP(4, 2)
    return model, model.init(jax.random.PRNGKey(0), np.ones(3, np.float32))


def _mutations(data: bytes, rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    """Truncations, flipped bytes, overwritten headers, garbage: about 40 variants of one file."""
    size = len(data)
    for cut in sorted({0, 1, 4, 7, 8, 9, 16, size // 4, size // 2, size - 8, size - 1}):
        if 0 <= cut < size:
            yield f"cut{cut}", data[:cut]
    for position in rng.integers(0, size, 12):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        yield f"flip{position}", bytes(flipped)
    for header in (b"\xff" * 8, (2**62).to_bytes(8, "little"), (size).to_bytes(8, "little"), b"\x00" * 8):
        yield f"head{header[:2].hex()}", header + data[8:]
    for length in (1, 9, 100, size):
        yield f"junk{length}", rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    yield "doubled", data + data
    yield "tail", data + b"\x00" * 64


def _outcome(load: Callable[[], Any]) -> str:
    """ "ok", or the one clean error; anything else fails the test with the case named."""
    message = None
    try:
        with _deadline(CASE_SECONDS):
            load()
    except bridge.CheckpointError as e:
        message = str(e)
    if message is None:
        return "ok"
    assert len(message.splitlines()) == 1, message
    assert len(message) < 600, message
    return "clean error"


def test_damaged_checkpoint_files_give_one_clean_error(tmp_path: Path) -> None:
    model, variables = _model_and_variables()
    state = bridge.to_state_dict(model, variables)
    originals = {"msgpack": serialization.to_bytes(variables)}
    for suffix in ("safetensors", "pt"):
        bridge.save_checkpoint(state, tmp_path / f"base.{suffix}")
        originals[suffix] = (tmp_path / f"base.{suffix}").read_bytes()
    rng = np.random.default_rng(11)
    counts: collections.Counter[str] = collections.Counter()
    for suffix, data in originals.items():
        for name, damaged in _mutations(data, rng):
            path = tmp_path / f"{name}.{suffix}"
            path.write_bytes(damaged)
            target = variables if suffix == "msgpack" else None
            try:
                counts[_outcome(lambda p=path, t=target: bridge.load_checkpoint(p, t))] += 1  # type: ignore[misc]
            except BaseException as e:
                raise AssertionError(f"{path.name}: {type(e).__name__}: {e}") from e
    print(f"\nfuzzed files: {sum(counts.values())} cases, {dict(counts)}")
    assert counts["clean error"] >= 60
    assert sum(counts.values()) == counts["clean error"] + counts["ok"]


def test_damaged_orbax_folders_give_one_clean_error_and_no_event_loop_noise(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _, variables = _model_and_variables()
    base = tmp_path / "base.orbax"
    bridge.save_checkpoint(variables, base)
    files = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
    counts: collections.Counter[str] = collections.Counter()
    for index, relative in enumerate(files):
        for how in ("truncate", "garbage", "delete", "fifo"):
            if how == "fifo" and relative.name != "_METADATA":
                continue
            folder = tmp_path / f"d{index}{how}.orbax"
            shutil.copytree(base, folder)
            victim = folder / relative
            if how == "truncate":
                victim.write_bytes(victim.read_bytes()[:3])
            elif how == "garbage":
                victim.write_bytes(b"\x00garbage" * 5)
            else:
                victim.unlink()
                if how == "fifo":
                    os.mkfifo(victim)
            counts[_outcome(lambda f=folder: bridge.load_checkpoint(f, variables))] += 1  # type: ignore[misc]
    gc.collect()  # the tasks a failed restore leaves behind log when they are collected
    print(f"\nfuzzed Orbax folders: {sum(counts.values())} cases, {dict(counts)}")
    assert counts["clean error"] >= 8
    assert "Event loop is closed" not in capfd.readouterr().err
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``flax2torch ARGS`` run in this process; no verdict may be printed."""
    with _deadline(CASE_SECONDS):
        code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "EQUIVALENT" not in captured.out
    return code, captured.err.strip().splitlines()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with small checkpoints, special files and odd user modules, as the current folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    model, variables = _model_and_variables()
    (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(variables))
    state = bridge.to_state_dict(model, variables)
    bridge.save_checkpoint(state, tmp_path / "w.safetensors")
    os.mkfifo(tmp_path / "fifo.msgpack")
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "nowhere.pt")
    (tmp_path / "folder.msgpack").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain.png").mkdir()
    (tmp_path / "plain.html").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "plain" / "notes.txt").write_text("not a checkpoint")
    torch.save({"0.weight": torch.zeros(4, 3).to(torch.float8_e4m3fn)}, tmp_path / "f8.pt")
    torch.save({"0.weight": torch.zeros(4, 3).to_sparse()}, tmp_path / "sparse.pt")
    torch.save({"0.weight": torch.empty(4, 3, device="meta")}, tmp_path / "meta.pt")
    from safetensors.torch import save_file

    save_file({"0.weight": torch.zeros(4, 3).to(torch.float8_e5m2)}, str(tmp_path / "f8.safetensors"))
    save_file({key: value.half() for key, value in state.items()}, str(tmp_path / "f16.safetensors"))
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(900):
        node["a"] = {}
        node = node["a"]
    import msgpack

    (tmp_path / "deep.msgpack").write_bytes(msgpack.packb(deep))
    (tmp_path / "fz_models.py").write_text(USER_MODELS)
    (tmp_path / "fz_syntax.py").write_text("def broken(:\n")
    (tmp_path / "fz_exit.py").write_text("raise SystemExit(0)\n")
    (tmp_path / "fz_interrupt.py").write_text("raise KeyboardInterrupt\n")
    return tmp_path


USER_MODELS = """
import os
import flax.linen as nn
import jax.numpy as jnp

class IntParams(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * self.param("scale", nn.initializers.zeros, (x.shape[-1],), jnp.int32)

def zero_width():
    return nn.Sequential([nn.Dense(0, kernel_init=nn.initializers.zeros)])

def exits():
    raise SystemExit(0)

def hard_exit():
    os._exit(0)

def interrupted():
    raise KeyboardInterrupt

def mlp():
    return nn.Sequential([nn.Dense(2)])

def two_wide_layers():
    return nn.Sequential([nn.Dense(80000), nn.relu, nn.Dense(80000)])

def _exit(module, args):
    raise SystemExit(0)

def port_that_exits_when_run():
    import torch
    linear = torch.nn.Linear(3, 2)
    linear.register_forward_pre_hook(_exit)
    return torch.nn.Sequential(linear)
"""

LONG = "w" * 250

CLI_CASES: list[tuple[list[str], str]] = [
    (["convert", "fifo.msgpack", "x.pt"], "fifo.msgpack: is a named pipe (FIFO), not a regular file"),
    (["convert", "zero.safetensors", "x.msgpack"], "zero.safetensors: is a device, not a regular file"),
    (["convert", "dangling.pt", "x.msgpack"], "dangling.pt: no such file (a link to a missing file)"),
    (["convert", "folder.msgpack", "x.pt"], "folder.msgpack: is a folder, expected a file"),
    (["convert", "f8.pt", "x.msgpack"], "f8.pt: 0.weight has dtype float8_e4m3fn, which the bridge does not convert"),
    (["convert", "f8.safetensors", "x.msgpack"], "f8.safetensors: 0.weight has dtype F8_E5M2"),
    (["convert", "sparse.pt", "x.msgpack"], "sparse.pt: 0.weight is a torch.sparse_coo tensor"),
    (["convert", "meta.pt", "x.msgpack"], "meta.pt: 0.weight is a meta tensor (no data)"),
    (["convert", "deep.msgpack", "x.pt"], "deep.msgpack: nested 101 levels deep"),
    (
        ["convert", "f16.safetensors", "x.msgpack", "--no-check"],  # the streaming writer: refused before writing
        "f16.safetensors: does not fit the model: 0.weight gives params/Dense_0/kernel dtype float16, the model has float32",
    ),
    (["convert", "w.safetensors", ".", "--force"], ".: is the current folder or a folder above it"),
    (["convert", "w.safetensors", "..", "--force"], "..: is the current folder or a folder above it"),
    (["convert", "w.safetensors", "./", "--force"], ".: is the current folder or a folder above it"),
    (["convert", "w.safetensors", "..", "--force", "--no-check"], "..: is the current folder or a folder above it"),
    (["convert", "w.safetensors", "plain", "--force"], "plain: is not an Orbax checkpoint folder"),
    (["convert", "w.safetensors", "missing/x.msgpack"], "missing/x.msgpack: the folder missing does not exist"),
    (["convert", "w.msgpack", "dangling.pt"], "dangling.pt: already exists; pass --force"),
    (["convert", "w.msgpack", f"{LONG}.safetensors"], f"{LONG}.safetensors: the name is 262 bytes long"),
    (["convert", "w.msgpack", "x.pt", "--seed", str(2**32)], "--seed must be an integer in [0, 2**32), got 4294967296"),
    (["convert", "w.msgpack", "x.pt", "--in-features", "-1"], "x must have at least one feature"),
    (["convert", "w.msgpack", "x.pt", "--flax", "fz_models:zero_width", "--in-features", "3"], "a layer of width 0"),
    (["golden", "g.msgpack"], "g.msgpack: golden writes a .safetensors file"),
    (["golden", "g.safetensors", "--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["golden", "g.safetensors", "--seed", str(2**32)], "--seed must be an integer in [0, 2**32), got 4294967296"),
    (["golden", "g.safetensors", "--in-features", "-1"], "x must have at least one feature"),
    (["golden", "g.safetensors", "--n-inputs", "1000000000"], "needs about"),
    (["check", "--seed", str(2**32)], "--seed must be an integer in [0, 2**32), got 4294967296"),
    (
        ["check", "--seed", str(2**32), "--flax", "fz_models:mlp"],
        "--seed must be an integer in [0, 2**32), got 4294967296",
    ),
    (["check", "--flax", "fz_models:two_wide_layers"], "needs about"),
    (["check", "--seed", str(2**32 - 2), "--seeds", "3"], "the last seed of --seed 4294967294 --seeds 3 must be"),
    (["check", "--params", "w.msgpack"], "--params needs --flax"),
    (["check", "--keep-torch-weights"], "--keep-torch-weights keeps the weights of --torch; it needs --torch"),
    (["check", "--flax", "fz_models:zero_width", "--hidden", "3"], "--hidden and --out size the seed MLP"),
    (["check", "--in-features", "-1"], "x must have at least one feature"),
    (["check", "--rtol", "inf"], "--rtol must be a finite number >= 0, got inf"),
    (
        ["check", "--flax", "fz_models:mlp", "--torch", "fz_models:port_that_exits_when_run"],
        "the model's code called sys.exit(0) during the command; no verdict",
    ),
    (["check", "--plot", "missing/p.png"], "--plot missing/p.png: the folder missing does not exist"),
    (["check", "--plot", ""], "--plot '': name a .png file"),
    (["check", "--plot", "errors.pdf"], "--plot 'errors.pdf': name a .png file"),  # it would hold PNG bytes
    (["check", "--html", "report.png"], "--html 'report.png': name a .html or .htm file"),
    (["check", "--html", "w.msgpack"], "--html 'w.msgpack': name a .html or .htm file"),
    (["check", "--plot", "dangling.png"], "--plot dangling.png: is a symbolic link; name the file itself or another"),
    (["check", "--plot", "plain.png"], "--plot plain.png: is a folder; name a .png file"),
    (["check", "--html", "plain.html"], "--html plain.html: is a folder; name a .html file"),
    (["check", "--n-inputs", "400000000"], "needs about"),
    (["check", "--in-features", "200000", "--hidden", "40000"], "a 200000 x 40000 weight has 8000000000 elements"),
    (["check", "--hidden", "80000"], "a 80000 x 80000 weight"),
    (["check", "--flax", "fz_syntax:model"], "--flax fz_syntax:model: importing it failed: "),
    (["check", "--flax", "fz_exit:model"], "--flax fz_exit:model: importing it called sys.exit(0)"),
    (["check", "--flax", "fz_interrupt:model"], "importing it was interrupted (KeyboardInterrupt)"),
    (["check", "--flax", "fz_models:exits"], "--flax fz_models:exits: building it called sys.exit(0)"),
    (["check", "--flax", "fz_models:hard_exit"], "--flax fz_models:hard_exit: building it called os._exit(0)"),
    (["check", "--flax", "fz_models:interrupted"], "building it was interrupted (KeyboardInterrupt)"),
    (["check", "--flax", "fz_models:IntParams"], "IntParams: params/scale is int32"),
    (
        ["check", "--flax", "fz_models:zero_width"],
        "Sequential: params/layers_0/bias has shape (0,): a layer of width 0",
    ),
    (["check", "--flax", "fz_models:zero_width", "--in-features", "-1"], "--in-features must be >= 1"),
]


@pytest.mark.parametrize(("args", "message"), CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_user_errors_exit_2_with_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = sorted(p.name for p in workdir.iterdir())
    code, lines = _cli(capsys, *args)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"flax2torch {args[0]}: error: "), lines
    assert message in lines[0], lines
    assert sorted(p.name for p in workdir.iterdir() if p.name != "__pycache__") == before  # nothing written or left


@pytest.mark.parametrize("suffix", ["msgpack", "orbax"])
def test_a_failed_conversion_with_force_leaves_the_old_destination(
    workdir: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    """float16 weights do not fit the float32 model: found after writing, before DST is replaced."""
    _, variables = _model_and_variables()
    other = f"old.{suffix}"
    bridge.save_checkpoint(variables, workdir / other)
    before = sorted((str(p), p.read_bytes()) for p in (workdir / other).rglob("*") if p.is_file()) or [
        ("", (workdir / other).read_bytes())
    ]
    half = {key: value.half() for key, value in bridge.load_checkpoint(workdir / "w.safetensors").items()}
    torch.save(half, workdir / "f16.pt")
    code, lines = _cli(capsys, "convert", "f16.pt", other, "--force")
    assert code == 2
    assert lines == [
        f"flax2torch convert: error: {other} (converted from f16.pt): params/Dense_0/bias is float16, the model expects float32"
    ]
    after = sorted((str(p), p.read_bytes()) for p in (workdir / other).rglob("*") if p.is_file()) or [
        ("", (workdir / other).read_bytes())
    ]
    assert after == before
    assert not [p for p in workdir.iterdir() if p.name.endswith(".partial")]


def test_not_equivalent_after_conversion_leaves_the_old_destination(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bridge.check

    def broken(*args: Any, **kwargs: Any) -> Any:  # as a conversion bug would make it
        return types.SimpleNamespace(ok=False, first_divergence=None, layers=[])

    torch.save({"old": torch.ones(1)}, workdir / "old.pt")
    precious = (workdir / "old.pt").read_bytes()
    monkeypatch.setattr(bridge.check, "check_equivalence", broken)
    with _deadline(CASE_SECONDS):
        code = main(["convert", "w.msgpack", "old.pt", "--force"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("check: NOT EQUIVALENT")
    assert out.strip().endswith("old.pt was not written")
    assert (workdir / "old.pt").read_bytes() == precious
    assert not [p for p in workdir.iterdir() if p.name.endswith(".partial")]


def test_permission_denied_is_not_called_missing(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def denied(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("w.msgpack"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)  # as chmod 000 does for a user other than root
    code, lines = _cli(capsys, "convert", "w.msgpack", "x.pt")
    assert code == 2
    assert lines == [
        "flax2torch convert: error: w.msgpack: cannot read it: permission denied; check its permissions (ls -l)"
    ]


def _run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_flax2torch(*args, cwd=directory)


@pytest.mark.slow
def test_user_code_cannot_fake_a_verdict_or_shadow_a_library(tmp_path: Path) -> None:
    """In a real process: os._exit(0) while importing --flax is exit 2 with one line; a safetensors.py and
    an orbax/ package in the current folder are never imported instead of the libraries."""
    (tmp_path / "fz_hard.py").write_text("import os\nos._exit(0)\n")
    result = _run(tmp_path, "check", "--flax", "fz_hard:model")
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        result.stderr.strip()
        == "flax2torch check: error: --flax fz_hard:model: importing it called os._exit(0); no verdict (exit 2)"
    )
    (tmp_path / "safetensors.py").write_text("raise SystemExit('shadowed safetensors ran')\n")
    (tmp_path / "orbax").mkdir()
    (tmp_path / "orbax" / "__init__.py").write_text("raise SystemExit('shadowed orbax ran')\n")
    (tmp_path / "fz_models.py").write_text(USER_MODELS)
    result = _run(tmp_path, "check", "--flax", "fz_models:mlp", "--no-grads", "--n-inputs", "4")
    assert result.returncode == 0, result.stderr
    assert "equivalence check: EQUIVALENT" in result.stdout
    _, variables = _model_and_variables()  # Orbax is a namespace package: an orbax/ here would win
    (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(variables))  # if imported after the folder
    result = _run(tmp_path, "convert", "w.msgpack", "w.safetensors")
    assert result.returncode == 0, result.stderr
    result = _run(tmp_path, "convert", "w.safetensors", "w.orbax")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "w.orbax" / "_CHECKPOINT_METADATA").is_file()
