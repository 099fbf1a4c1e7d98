"""The HTML report without a browser (tests/browser renders it in chromium): what the page holds, that no text
from the model reaches it unescaped, and that writing it never replaces a file it did not write."""

from __future__ import annotations

import html
import html.parser
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import bridge


class _Named(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(2, name="<img src=x onerror=alert(1)>&")(nn.relu(nn.Dense(4, name="first")(x)))


class _Port(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(3, 4)
        self.second = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def _report(broken: bool) -> Any:
    model = _Named()
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.load_into(model, variables, _Port(), inputs=x)
    if broken:
        with torch.no_grad():
            port.first.weight.mul_(1.1)
    return bridge.check_equivalence(model, variables, port, x)


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_a_failing_report_shows_the_verdict_the_divergence_and_every_call(tmp_path: Path) -> None:
    report = _report(broken=True)
    path = tmp_path / "report.html"
    report.to_html(path)
    page = path.read_text()
    assert ">NOT EQUIVALENT</h1>" in page
    assert "id='first-divergence'" in page
    assert report.first_divergence.flax_path == "first"
    assert "class='call first' data-index='1'" in page  # the divergent call is marked in the tree
    indices = {int(attrs["data-index"] or -1) for tag, attrs in _tags(page) if "data-index" in attrs}
    assert indices == {row.index for row in report.layers}
    assert page.count("<rect") == len(report.layers)  # one column per call in the err/tol strip
    assert all(html.escape(g.name, quote=True) in page for g in report.gradients)


def test_text_from_the_model_is_escaped_and_no_script_but_ours_runs() -> None:
    page = _report(broken=True)._repr_html_()
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;" in page
    assert [tag for tag, _ in _tags(page) if tag in {"script", "img", "iframe", "object"}] == []


def test_a_passing_report_has_no_divergence_box_and_says_equivalent(tmp_path: Path) -> None:
    report = _report(broken=False)
    assert report.ok
    page = report._repr_html_()
    assert ">EQUIVALENT</h1>" in page
    assert "first-divergence" not in page


def test_to_html_replaces_its_own_page_only(tmp_path: Path) -> None:
    report = _report(broken=False)
    path = tmp_path / "report.html"
    report.to_html(path)
    report.to_html(path)  # its own earlier page: replaced
    mine = tmp_path / "index.html"
    mine.write_text("<html>my page</html>")
    with pytest.raises(bridge.InvalidArgumentError, match="not a report flax-torch-bridge wrote"):
        report.to_html(mine)
    assert mine.read_text() == "<html>my page</html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "report.html"]  # no temporary left


def test_check_html_writes_the_page_and_refuses_a_foreign_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import main

    page = tmp_path / "report.html"
    assert main(["check", "--seed", "0", "--n-inputs", "4", "--html", str(page)]) == 0
    assert ">EQUIVALENT</h1>" in page.read_text()
    foreign = tmp_path / "notes.html"
    foreign.write_text("mine")
    capsys.readouterr()
    assert main(["check", "--seed", "0", "--n-inputs", "4", "--html", str(foreign)]) == 2
    assert "not a report flax-torch-bridge wrote" in capsys.readouterr().err
    assert foreign.read_text() == "mine"
