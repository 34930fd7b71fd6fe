"""KFP's cron syntax for recurring runs: 6 fields with seconds first (robfig/cron), checked with suggested fixes.

    validate_cron("0 0 3 * * 0")   # Sundays 03:00 -> returned normalised
    validate_cron("0 3 * * 0")     # CronError: 5 fields ... Did you mean '0 0 3 * * 0'?
"""

from __future__ import annotations


class CronError(ValueError):
    """Not a cron expression KFP accepts; the message suggests the fix."""


_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                     "@hourly"}
_CRON_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23),
                ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 6))
_CRON_NAMES = {"month": "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(),
               "day-of-week": "SUN MON TUE WED THU FRI SAT".split()}


def validate_cron(cron: str) -> str:
    """Check a KFP cron expression: 6 fields, seconds first (robfig/cron syntax).

    Returns the normalized expression; raises CronError with a suggested fix.
    """
    expr = " ".join((cron or "").split())
    if expr in _CRON_DESCRIPTORS or expr.startswith("@every "):
        return expr
    fields = expr.split(" ") if expr else []
    if len(fields) == 5:
        raise CronError(
            f"cron {cron!r} has 5 fields, but KFP uses 6 with seconds first "
            "(second minute hour day-of-month month day-of-week). "
            f"Did you mean '0 {expr}'? e.g. '0 0 3 * * 0' is every Sunday at 03:00.")
    if len(fields) != 6:
        raise CronError(
            f"cron {cron!r} has {len(fields)} fields; KFP expects 6: second minute hour "
            "day-of-month month day-of-week, e.g. '0 0 3 * * 0' (Sundays 03:00)")
    for text, (label, low, high) in zip(fields, _CRON_FIELDS):
        names = _CRON_NAMES.get(label, [])
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not step.isdigit():
                raise CronError(f"cron {cron!r}: bad step {step!r} in the {label} field")
            if base in ("*", "?"):
                continue
            for bound in base.split("-", 1):
                if bound.upper() in names:
                    continue
                if not bound.isdigit() or not low <= int(bound) <= high:
                    raise CronError(f"cron {cron!r}: {bound!r} is not a valid {label} "
                                       f"({low}-{high}); fields are second minute hour "
                                       "day-of-month month day-of-week")
    return expr
