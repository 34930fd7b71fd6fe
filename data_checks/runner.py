"""Run the data-check suites on a turn table and a persona table; report and gate.

``run_checks`` validates the tables (and the per-conversation, per-split and
per-persona frames derived from them, see :mod:`convrl.data_checks.suites`)
with Great Expectations and returns a :class:`CheckReport` that renders as
Markdown, standalone HTML or a JSON-able dict, and that can fail the
pipeline::

    from convrl.data_checks.runner import run_checks
    report = run_checks(turns, personas, min_conversations_per_split=5, max_text_chars=4000)
    Path("report.html").write_text(report.to_html())
    report.raise_for_failure()   # DataValidationError naming each failed expectation

From a shell, on Parquet files written by ingest::

    python -m convrl.data_checks.runner turns.parquet personas.parquet [--html out.html]

One ephemeral GX context is created per process and reused; GX analytics and
its tqdm progress bars are switched off.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from convrl.data_checks import suites  # noqa: E402

SAMPLE_SIZE = 5
# Columns that identify a row in each suite's frame; a sample shows these plus the
# column under test. Derived frames are narrow, so None there means "every column".
_SAMPLE_KEYS = {"turns": ("conversation_id", "turn_index", "role", "split"),
                "personas": ("persona_id", "name"), "persona_fields": ("persona_id",)}
_CELL_CHARS = 160
_HEADERS = ("Suite", "Expectation", "Column", "Result", "Unexpected", "Elements", "Description")


class DataValidationError(ValueError):
    """The data failed one or more expectations; ``.report`` holds the full report."""

    def __init__(self, message: str, report: CheckReport):
        super().__init__(message)
        self.report = report


@dataclass
class CheckReport:
    results: list[dict] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(r["success"] for r in self.results)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        n, bad = len(self.results), len(self.failures)
        if not bad:
            return f"Data checks PASSED: all {n} expectations met."
        return f"Data checks FAILED: {bad} of {n} expectations failed."

    def to_dict(self) -> dict:
        return {"success": self.success, "summary": self.summary(),
                "n_expectations": len(self.results), "n_failed": len(self.failures),
                "results": [dict(r) for r in self.results]}

    def to_markdown(self) -> str:
        lines = ["# Data checks", "", f"**{self.summary()}**", "",
                 "| " + " | ".join(_HEADERS) + " |", "|---" * len(_HEADERS) + "|"]
        for r in self.results:
            cells = [r["suite"], f"`{r['expectation']}`", r["column"] or "-",
                     "pass" if r["success"] else "**FAIL**", _num(r["unexpected_count"]),
                     _num(r["element_count"]), r["description"]]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        if self.failures:
            lines += ["", "## Failures"]
            for r in self.failures:
                lines += ["", f"### {r['suite']}: `{r['expectation']}` ({r['column'] or 'table'})", "",
                          f"{r['description']} - {_num(r['unexpected_count'])} unexpected "
                          f"of {_num(r['element_count'])}. Sample:", ""]
                lines += [f"- `{_md_code(s)}`" for s in r["sample"]] or ["- (no sample)"]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        e = html.escape
        ok = self.success
        rows = []
        for r in self.results:
            cls = "pass" if r["success"] else "fail"
            cells = [e(r["suite"]), f"<code>{e(r['expectation'])}</code>", e(r["column"] or "-"),
                     "pass" if r["success"] else "FAIL", e(_num(r["unexpected_count"])),
                     e(_num(r["element_count"])), e(r["description"])]
            classes = ["", "", "", ' class="res"', ' class="n"', ' class="n"', ""]
            rows.append(f'<tr class="{cls}">' + "".join(f"<td{k}>{c}</td>" for k, c in zip(classes, cells))
                        + "</tr>")
        fails = []
        for r in self.failures:
            items = "".join(f"<li><code>{e(s)}</code></li>" for s in r["sample"]) or "<li>(no sample)</li>"
            fails.append(
                f'<section class="failure"><h3>{e(r["suite"])}: <code>{e(r["expectation"])}</code> '
                f'({e(r["column"] or "table")})</h3><p>{e(r["description"])} - '
                f'{e(_num(r["unexpected_count"]))} unexpected of {e(_num(r["element_count"]))}.</p>'
                f'<ul>{items}</ul></section>')
        fail_html = ("<h2>Failures</h2>" + "".join(fails)) if fails else ""
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>convrl data checks: {"passed" if ok else "FAILED"}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.summary {{ padding: .6em 1em; border-radius: 4px; font-weight: bold;
           background: {"#e6f4ea" if ok else "#fce8e6"}; color: {"#137333" if ok else "#a50e0e"}; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 90%; }}
th, td {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f1f3f4; }}
td.n {{ text-align: right; }}
tr.fail td.res {{ color: #a50e0e; font-weight: bold; }}
tr.pass td.res {{ color: #137333; }}
section.failure {{ border-left: 4px solid #a50e0e; padding-left: 1em; margin: 1em 0; }}
code {{ white-space: pre-wrap; word-break: break-word; }}
</style>
</head>
<body>
<h1>convrl data checks</h1>
<p class="summary">{e(self.summary())}</p>
<table>
<thead><tr>{"".join(f"<th>{h}</th>" for h in _HEADERS)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
{fail_html}
</body>
</html>
"""

    def raise_for_failure(self) -> None:
        if self.success:
            return
        lines = [self.summary()]
        for r in self.failures:
            lines.append(f"- [{r['suite']}] {r['expectation']} on {r['column'] or 'table'}: "
                         f"{_num(r['unexpected_count'])} unexpected of {_num(r['element_count'])} "
                         f"({r['description']})")
            lines += [f"    e.g. {s}" for s in r["sample"][:3]]
        lines.append("Fix the source data or the ingest config (sources, PII redaction, text budget, "
                     "split settings) and re-run ingest; the full report lists every check.")
        raise DataValidationError("\n".join(lines), self)


# ------------------------------------------------------------------ running

@lru_cache(maxsize=1)
def _context():
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def _batch(name: str, df: pd.DataFrame):
    ctx = _context()
    try:
        ds = ctx.data_sources.get("convrl")
    except (KeyError, ValueError):
        ds = ctx.data_sources.add_pandas("convrl")
    try:
        asset = ds.get_asset(name)
    except LookupError:
        asset = ds.add_dataframe_asset(name)
    try:
        bd = asset.get_batch_definition("whole")
    except (KeyError, LookupError):
        bd = asset.add_batch_definition_whole_dataframe("whole")
    return bd.get_batch(batch_parameters={"dataframe": df})


def run_checks(turns: pd.DataFrame, personas: pd.DataFrame, *,
               min_conversations_per_split: int = 5, max_text_chars: int = 4000) -> CheckReport:
    """Validate the turn and persona tables; never raises for bad data (see ``raise_for_failure``)."""
    # A clean RangeIndex makes GX's unexpected_index_list positions we can look rows up by.
    turns = turns.reset_index(drop=True)
    personas = personas.reset_index(drop=True)
    plan = [
        ("turns", turns, suites.turns_suite(max_text_chars)),
        ("conversations", suites.conversation_frame(turns), suites.conversation_suite()),
        ("splits", suites.split_frame(turns), suites.split_suite(min_conversations_per_split)),
        ("personas", personas, suites.persona_suite()),
        ("persona_fields", suites.persona_field_frame(personas), suites.persona_field_suite()),
    ]
    results: list[dict] = []
    for name, df, suite in plan:
        outcome = _batch(name, df).validate(suite, result_format="COMPLETE")
        ordered = sorted(outcome.results, key=lambda r: (r.expectation_config.meta or {}).get("order", 0))
        results += [_result(name, df, r) for r in ordered]
    return CheckReport(results)


def _result(suite: str, df: pd.DataFrame, r) -> dict:
    cfg = r.expectation_config
    kw = cfg.kwargs
    column = kw.get("column") or (", ".join(kw["column_list"]) if "column_list" in kw
                                 and cfg.type == "expect_compound_columns_to_be_unique" else None)
    res = r.result or {}
    error = _exception_message(r.exception_info)
    unexpected = res.get("unexpected_count")
    if error:
        sample = [f"error: {error}"]
        unexpected = None
    elif "unexpected_index_list" in res:
        sample = _row_samples(df, res["unexpected_index_list"], kw, _SAMPLE_KEYS.get(suite))
    elif res.get("unexpected_list"):
        sample = [_clip(repr(v)) for v in res["unexpected_list"][:SAMPLE_SIZE]]
    else:
        sample = _table_sample(res, kw) if not r.success else []
    if unexpected is None and not error:
        # Table-level checks have no per-row count; count column mismatches instead.
        unexpected = 0 if r.success else (len(_mismatches(res)) or 1)
    return {
        "suite": suite,
        "expectation": cfg.type,
        "column": column,
        "success": bool(r.success),
        "unexpected_count": None if unexpected is None else int(unexpected),
        "element_count": int(res["element_count"]) if res.get("element_count") is not None else len(df),
        "sample": sample,
        "description": cfg.description or cfg.type,
    }


def _exception_message(info) -> str | None:
    if not info:
        return None
    # GX gives either one flat dict or a dict of them keyed by the metric that failed.
    infos = [info] if "raised_exception" in info else list(info.values())
    msgs = [i.get("exception_message") for i in infos if isinstance(i, dict) and i.get("raised_exception")]
    return "; ".join(dict.fromkeys(str(m) for m in msgs if m)) or None


def _row_samples(df: pd.DataFrame, index: list, kw: dict, keys: tuple | None) -> list[str]:
    cols = list(df.columns)
    if keys is not None:
        tested = [kw["column"]] if "column" in kw else list(kw.get("column_list", []))
        # persona_fields tests "<col>_ok"; the raw "<col>" is what the reader needs to see.
        tested += [c[:-3] for c in tested if c.endswith("_ok")]
        cols = [c for c in dict.fromkeys([*keys, *tested]) if c in df.columns]
    out = []
    for i in index[:SAMPLE_SIZE]:
        try:
            row = df.loc[i, cols]
        except KeyError:
            out.append(f"row {i}")
            continue
        out.append(f"row {i}: " + ", ".join(f"{c}={_clip(_fmt(row[c]))}" for c in cols))
    return out


def _mismatches(res: dict) -> list:
    """Column-level mismatches of a table expectation, as a flat list.

    The ordered-list check reports a list of positions; the set check a dict of
    missing/unexpected names.
    """
    m = (res.get("details") or {}).get("mismatched") or []
    if isinstance(m, dict):
        return [{kind: col} for kind, cols in m.items() for col in (cols or [])]
    return list(m)


def _table_sample(res: dict, kw: dict) -> list[str]:
    out = []
    expected, observed = kw.get("column_list") or kw.get("column_set"), res.get("observed_value")
    if isinstance(expected, list) and isinstance(observed, list):
        # One missing column shifts every later position; name the root cause first.
        missing = [c for c in expected if c not in observed]
        extra = [c for c in observed if c not in expected]
        out.append(_clip(f"missing columns: {missing}; unexpected columns: {extra}"))
    mismatched = _mismatches(res)
    if mismatched:
        return out + [_clip(json.dumps(m, default=str)) for m in mismatched[:SAMPLE_SIZE - len(out)]]
    if out:
        return out
    if res.get("details"):
        return [_clip(json.dumps(res["details"], default=str))]
    if "observed_value" in res:
        return [_clip(f"observed: {res['observed_value']!r}")]
    return []


def _fmt(v) -> str:
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()  # numpy scalar -> Python, so samples read 3 rather than np.int64(3)
    if isinstance(v, float) and math.isnan(v):
        return "null"
    return "null" if v is None else repr(v)


def _clip(s: str, n: int = _CELL_CHARS) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _num(v) -> str:
    return "-" if v is None else str(v)


def _md_cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_code(s: str) -> str:
    return s.replace("`", "'").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("turns", help="turns.parquet")
    ap.add_argument("personas", help="personas.parquet")
    ap.add_argument("--min-conversations-per-split", type=int, default=5)
    ap.add_argument("--max-text-chars", type=int, default=4000)
    ap.add_argument("--html", help="also write the HTML report here")
    args = ap.parse_args(argv)
    report = run_checks(pd.read_parquet(args.turns), pd.read_parquet(args.personas),
                        min_conversations_per_split=args.min_conversations_per_split,
                        max_text_chars=args.max_text_chars)
    print(report.to_markdown())
    if args.html:
        Path(args.html).write_text(report.to_html())
    return 0 if report.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
