"""The README's "Five minutes" tutorial, run as written: its files are written into a fresh folder, each
``$ command`` line is run there, and what it prints must be the output the README shows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tutorial() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Five minutes")
    return text[start : text.index("\n## ", start + 1)]


@pytest.mark.slow
def test_the_tutorial_runs_as_written_and_prints_what_it_shows(tmp_path: Path) -> None:
    section = _tutorial()
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    files = {"mymodel.py": blocks[1][1], "check_port.py": blocks[2][1], "convert.py": blocks[4][1]}
    assert "class TorchMLP" in files["mymodel.py"]
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    sessions = [body for language, body in blocks if language == "" and body.startswith("$ ")]
    assert len(sessions) == 3
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("PYTHONPATH", None)
    step = re.compile(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", flags=re.M)
    steps = [found for session in sessions for found in step.findall(session)]
    assert [command.split()[:2] for command, _ in steps] == [
        ["python", "check_port.py"],
        ["python", "convert.py"],
        ["flax2torch", "export"],
        ["python", "-c"],
    ]
    for command, shown in steps:
        argv = shlex.split(command)
        argv[0] = sys.executable if argv[0] == "python" else str(Path(sys.executable).parent / argv[0])
        run = subprocess.run(
            argv, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout == shown, f"{command}\n{run.stdout}"
