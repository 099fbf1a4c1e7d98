"""Sessions: tests (the fast lane), hf, html, lint, typecheck (default); tests-all (every test: CI), check (the
main job), bench, zoo, mutants (opt-in).

Every environment installs ``torch==2.13.0`` before the project: on the development machine that
pin takes the local CPU wheel, while the open range in pyproject.toml, resolved alone, would pull
a multi-GB CUDA build. Override it elsewhere with ``TORCH_SPEC="torch==2.5.1" nox ...``.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["tests", "hf", "html", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PYTHON = "3.11"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


def install_project(session: nox.Session, extras: str = "") -> None:
    """Install the pinned torch first, then the project (editable) with ``extras``."""
    session.install(TORCH_SPEC)
    session.install("-e", f".[{extras}]" if extras else ".")


# tests/zoo, tests/hf and tests/browser need transformers or a browser: sessions of their own
_OWN_SESSIONS = ("--ignore=tests/zoo", "--ignore=tests/hf", "--ignore=tests/browser")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The fast lane: every test not marked ``slow`` (a few minutes on 2 cores; arguments pass through to pytest:
    ``nox -s tests -- -k chain``)."""
    install_project(session, "test")
    session.run("pytest", "-n", "auto", "-m", "not slow", *_OWN_SESSIONS, *session.posargs)


@nox.session(name="tests-all", python=PYTHON, default=False)
def tests_all(session: nox.Session) -> None:
    """Every test of the default install, the ``slow`` ones included (what CI runs, with hf and html)."""
    install_project(session, "test")
    session.run("pytest", "-n", "auto", *_OWN_SESSIONS, *session.posargs)


@nox.session(python=PYTHON)
def hf(session: nox.Session) -> None:
    """Everything tested on Hugging Face's own code, in a session of its own (transformers<5 is installed here
    only, never a dependency of the package): ``convert-hf`` on tiny checkpoints that transformers 4.57 itself
    saves (sharded), and the zoo's verdicts (its Flax models against its PyTorch classes; ``nox -s zoo`` adds
    the table)."""
    install_project(session, "test")
    session.install("transformers>=4.57,<5")
    session.run("pytest", "-n", "auto", "tests/hf", "tests/zoo", *session.posargs)


@nox.session(python=PYTHON)
def html(session: nox.Session) -> None:
    """The HTML report in a real browser: Debian's chromium, headless, installed here when missing (apt-get,
    as root or through sudo); a missing browser fails this session instead of skipping its tests."""
    if shutil.which("chromium") is None:
        sudo = "" if os.geteuid() == 0 else "sudo "
        install = f"{sudo}apt-get install -y -q chromium"
        session.run("bash", "-c", f"{install} || ({sudo}apt-get update -q && {install})", external=True)
    install_project(session, "test")
    session.run("pytest", "tests/browser", *session.posargs, env={"FLAX2TORCH_REQUIRE_BROWSER": "1"})


@nox.session(python=PYTHON, default=False)
def zoo(session: nox.Session) -> None:
    """Hugging Face's Flax models against its own PyTorch classes (transformers 4.57.x, the last line with Flax;
    tiny random configs, no downloads): the verdicts' tests, then the table architecture x step."""
    install_project(session, "test")
    session.install("transformers>=4.57,<5")
    session.run("pytest", "-n", "auto", "tests/zoo", *session.posargs)
    session.run("python", "benchmarks/zoo_table.py")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Mypy (strict) on the three packages, with pytest installed: ``bridge.testing`` is a pytest plugin."""
    install_project(session, "test")
    session.install("mypy>=1.10")
    session.run("mypy")


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks (minutes; about 4 GiB of temporary disk, 8 GiB of memory): false alarms over 20,000
    correct layers per dtype and the detection thresholds, conversion speed and memory, checking an 85M
    transformer as a call tree, loading a 2000-layer tree, the converted module's speed against a
    hand-written port, checkpoint memory, multi-seed sweep throughput, start-up time."""
    install_project(session, "test")
    session.run("python", "benchmarks/false_alarms.py")
    session.run("python", "benchmarks/conversion_speed.py")
    session.run("python", "benchmarks/tree_check_speed.py")
    session.run("python", "benchmarks/tree_load_speed.py")
    session.run("python", "benchmarks/native_speed.py")
    session.run("python", "benchmarks/checkpoint_rss.py")
    session.run("python", "benchmarks/seed_sweep.py")
    session.run("python", "benchmarks/startup.py")


@nox.session(python=PYTHON, default=False)
def mutants(session: nox.Session) -> None:
    """Mutation testing with a planted set over bridge/ (minutes): every mutant must be killed by the suite."""
    install_project(session, "test")
    session.run("python", "benchmarks/planted_mutants.py")


@nox.session(python=PYTHON)
def check(session: nox.Session) -> None:
    """The main job: convert the seed's Flax MLP to PyTorch and check both agree (arguments pass through)."""
    install_project(session)
    session.run("flax2torch", "check", *session.posargs)
