"""Compare, gradients, hints, report and the multi-seed sweep: ``check_equivalence`` for chains and trees,
and the report's drawings (text, rich, HTML, plot).

This file is the package's face: other packages import these names from here, never from its private modules.
"""

from ._check import assert_equivalent as assert_equivalent
from ._check import check_equivalence as check_equivalence
from ._compare import Comparison as Comparison
from ._html import may_write_report as may_write_report
from ._plot import plot_report as plot_report
from ._prepare import output_tolerance as output_tolerance
from ._report import Divergence as Divergence
from ._report import EquivalenceReport as EquivalenceReport
from ._report import GradientRow as GradientRow
from ._report import LayerRow as LayerRow
from ._report import SeedSweepReport as SeedSweepReport
from ._rich import print_rich_report as print_rich_report
from ._verify import to_torch as to_torch
from ._verify import verify as verify
