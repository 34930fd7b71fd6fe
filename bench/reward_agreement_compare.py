"""Side by side: the composite and the heads of several ``bench/reward_agreement.py`` runs (README table).

Each argument is ``LABEL=path/to/result.json``; the first run also gives the length baseline and the
dialogue and best judges (they do not depend on the heads). One row per (set, rating)::

    .venv/bin/python bench/reward_agreement_compare.py before=/tmp/agree0/result.json \\
        now=/tmp/agree1/result.json learned=/tmp/agree2/result.json
"""

from __future__ import annotations

import argparse
import json


def _cell(row: dict | None) -> str:
    if row is None or row.get("spearman") is None:
        return "n/a"
    lo, hi = row["spearman_ci"]
    return f"{row['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _by(result: dict) -> dict:
    return {(s, r["rating"], r["head"]): r for s, res in result["sets"].items() for r in res["rows"]}


def _best(by: dict, s: str, rating: str, names) -> str:
    got = [(by[(s, rating, h)]["spearman"], h) for h in names
           if (s, rating, h) in by and by[(s, rating, h)].get("spearman") is not None]
    if not got:
        return "n/a"
    h = max(got)[1]
    return f"{h} {_cell(by[(s, rating, h)])}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=result.json")
    a = p.parse_args()
    runs = []
    for arg in a.runs:
        label, _, path = arg.partition("=")
        if not path:
            raise SystemExit(f"{arg}: expected LABEL=path/to/result.json")
        with open(path) as fh:
            result = json.load(fh)
        calibrated = any(r["head"] == "composite_calibrated" for res in result["sets"].values() for r in res["rows"])
        runs.append((label, _by(result), calibrated))
    heads = ("quality", "personality", "engagement", "relevance")
    cols = ["set", "rating", "level", "n"]
    for label, _, calibrated in runs:
        cols += [f"composite ({label})", f"best head ({label})"] + ([f"calibrated ({label})"] if calibrated else [])
    cols += ["length", "dialogue_judge", "best_judge"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    with open(a.runs[0].partition("=")[2]) as fh:
        first = json.load(fh)
    for s, res in first["sets"].items():
        for rating, info in res["ratings"].items():
            n = info["groups"] if info["level"] != "response" else info["items"]
            cells = [s, rating, info["level"], str(n)]
            for _, by, calibrated in runs:
                cells += [_cell(by.get((s, rating, "composite"))), _best(by, s, rating, heads)]
                cells += [_cell(by.get((s, rating, "composite_calibrated")))] if calibrated else []
            by0 = runs[0][1]
            judges = [h for (s_, r_, h) in by0 if s_ == s and r_ == rating and h.startswith(("judge_", "llm:"))]
            cells += [_cell(by0.get((s, rating, "baseline:length"))), _cell(by0.get((s, rating, "dialogue_judge"))),
                      _best(by0, s, rating, judges)]
            lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
