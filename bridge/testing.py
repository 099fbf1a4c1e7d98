"""pytest integration, registered as a plugin by the package's ``pytest11`` entry point.

``assert_equivalent`` fails a test with the whole report as its message (``NotEquivalentError``, an
``AssertionError``). The ``flax_torch_check`` fixture does the same and also attaches the report to the
test's report sections ("flax-torch-bridge report"), where ``pytest -rA``, junit XML and CI summaries find it,
with the path of its HTML page (written in the test's ``tmp_path``).
JAX and torch are imported when a check runs, not when pytest starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

    from .check import EquivalenceReport

SECTION = "flax-torch-bridge report"


def assert_equivalent(
    model: Any, variables: Any, torch_module: torch.nn.Module, inputs: Any = None, **options: Any
) -> EquivalenceReport:
    """``bridge.check_equivalence``, returning the report when equivalent, else raising ``NotEquivalentError``
    (an ``AssertionError``) whose message is the report."""
    from .check import assert_equivalent as check

    return check(model, variables, torch_module, inputs, **options)


@pytest.fixture
def flax_torch_check(request: pytest.FixtureRequest) -> Callable[..., EquivalenceReport]:
    """``assert_equivalent`` that also attaches the report of a failed check to the test's report."""

    def check(model: Any, variables: Any, torch_module: torch.nn.Module, inputs: Any = None, **options: Any) -> Any:
        from ._errors import NotEquivalentError

        try:
            return assert_equivalent(model, variables, torch_module, inputs, **options)
        except NotEquivalentError as e:
            page = request.getfixturevalue("tmp_path") / "flax-torch-bridge-report.html"
            e.report.to_html(page)
            request.node.add_report_section("call", SECTION, f"{e.report}\nHTML report: {page}")
            raise

    return check
