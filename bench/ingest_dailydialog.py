"""Ingest + validate all of DailyDialog (ConvLab-3 data.zip: 13,118 dialogues, ~103k turns).

Target: at most 60 s wall time on 2 cores. Runs ``convrl.data.ingest.ingest``
(parse, clean, redact PII, exact + near-duplicate removal, split) and then the
great-expectations suites (``convrl.data_checks.runner.run_checks``) with the
bundled persona cards, and prints the wall time of each phase and the peak
memory (max RSS of this process) as JSON::

    .venv/bin/python bench/ingest_dailydialog.py
    .venv/bin/python bench/ingest_dailydialog.py --data ../shared/data/dailydialog/convlab3_unified/data.zip

The data set is CC BY-NC-SA 4.0 (research use); it is read from ../shared/data
and never copied into the project. Exits 2 with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dailydialog" / "convlab3_unified" / "data.zip"
TARGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT), help="DailyDialog data.zip or original-release folder")
    ap.add_argument("--near-duplicate-threshold", type=float, default=0.85)
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"bench: {args.data} is absent (only machines with ../shared/data have DailyDialog)", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    from convrl.data.ingest import ingest
    from convrl.data.personas import load_personas, personas_table
    from convrl.data_checks.runner import run_checks

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = ingest([f"dailydialog:{args.data}"], near_duplicate_threshold=args.near_duplicate_threshold)
    t_ingest = time.perf_counter() - t1
    t2 = time.perf_counter()
    personas = personas_table(load_personas(["empathetic_coach", "cheerful_guide", "calm_expert"]))
    report = run_checks(result.turns, personas)
    t_validate = time.perf_counter() - t2
    total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    out = {
        "data": str(args.data),
        "conversations": result.stats["conversations"], "turns": result.stats["turns"],
        "duplicates_removed": result.stats["duplicates_removed"],
        "near_duplicates_removed": result.stats["near_duplicates_removed"],
        "quarantined": result.stats["quarantined"],
        "quarantine_rows_by_category": result.stats["quarantine_categories"],
        "checks_passed": report.success, "expectations": len(report.results),
        "seconds": {"import": round(t_import, 2), "ingest": round(t_ingest, 2), "validate": round(t_validate, 2),
                    "total": round(total, 2)},
        "turns_per_second_ingest": round(result.stats["turns"] / t_ingest),
        "peak_rss_mb": round(peak_mb, 1),
        "target_seconds": TARGET_S, "within_target": total <= TARGET_S,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(out, indent=2))
    if not report.success:
        print(report.summary(), file=sys.stderr)
    return 0 if report.success else 1


if __name__ == "__main__":
    sys.exit(main())
