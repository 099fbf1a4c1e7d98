"""Compare, gradients, hints, report and the multi-seed sweep: ``check_equivalence`` for chains and trees."""
