"""Great Expectations data checks for the turn and persona tables.

``convrl.data_checks.suites`` defines the expectation suites (and the derived
per-conversation / per-split / per-persona frames they run on);
``convrl.data_checks.runner`` runs them and renders the report::

    from convrl.data_checks.runner import run_checks
    report = run_checks(turns, personas)
    report.raise_for_failure()

or ``python -m convrl.data_checks.runner turns.parquet personas.parquet``.
Names are imported lazily so that importing this package does not import GX.
"""

from __future__ import annotations

__all__ = ["run_checks", "CheckReport", "DataValidationError"]


def __getattr__(name: str):
    if name in __all__:
        from convrl.data_checks import runner
        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
