"""Report sections about the reward signal itself: how far each judge agrees with people, and which reward
heads pull against each other. Each returns ``(html_parts, markdown_lines)`` for ``convrl.eval.report``::

    from convrl.eval.report_sections import conflicts_section
    html_parts, md_lines = conflicts_section(analysis.conflicts)
"""

from __future__ import annotations

import html

import pandas as pd


def escape(x) -> str:
    """Any value as HTML-escaped text (model replies go into the report verbatim)."""
    return html.escape(str(x))


_e = escape


def judge_agreement_section(judge_columns: list[str]) -> tuple[list[str], list[str]]:
    """HTML and Markdown rows: each judge in the scores, which human ratings it was checked on, and how well."""
    from convrl.eval.judges import AGREEMENT

    rows = [(c, AGREEMENT[c]) for c in judge_columns if c in AGREEMENT]
    if not rows:
        return [], []
    h = ["<h2>How far the judges agree with people</h2><p>Measured with <code>convrl meta-eval</code> on human-rated "
         "sets never used to build the judge (Spearman, 95% cluster-bootstrap CI).</p>",
         "<table><tr><th>judge</th><th>human ratings</th><th>agreement</th></tr>"]
    md = ["## How far the judges agree with people", "", "| judge | human ratings | agreement |", "|---|---|---|"]
    for c, info in rows:
        h.append(f"<tr><td>{_e(c)}</td><td>{_e(info['data'])}</td><td>{_e(info['value'])}</td></tr>")
        md.append(f"| {c} | {info['data']} | {info['value']} |")
    return h + ["</table>"], md + [""]


CONFLICTS_INTRO = ("Spearman correlation of each pair of reward heads over the baseline's replies, the policy RL "
                   "started from (95% CI, Fisher z). A pair whose CI lies below 0 pulls against each other: RL on "
                   "their weighted sum can buy one with the other, so watch the weaker one's judge above.")


def conflicts_section(conflicts: pd.DataFrame) -> tuple[list[str], list[str]]:
    """HTML and Markdown: which reward heads conflict on the baseline's replies (``metrics.head_conflicts``)."""
    if conflicts is None or not len(conflicts):
        return [], []
    n = int(conflicts["conflict"].sum())
    badge = (f"<span class='badge bad'>{n} conflicting pair{'s' * (n != 1)}</span>" if n
             else "<span class='badge good'>no conflicting heads</span>")
    h = ["<h2>Reward heads that pull against each other</h2>", f"<p>{_e(CONFLICTS_INTRO)}</p>", badge,
         "<table><tr><th>head</th><th>head</th><th>Spearman</th><th>95% CI</th><th class='l'>verdict</th></tr>"]
    md = ["## Reward heads that pull against each other", "", CONFLICTS_INTRO, "",
          f"{n} conflicting pair(s).", "", "| head | head | Spearman | 95% CI | verdict |", "|---|---|---|---|---|"]
    for _, r in conflicts.iterrows():
        verdict = "conflict: RL can trade one for the other" if r["conflict"] else (
            "aligned" if r["lo"] > 0 else "no significant relation")
        ci = f"[{r['lo']:+.2f}, {r['hi']:+.2f}]"
        h.append(f"<tr class='{'flag' if r['conflict'] else ''}'><td>{_e(r['head_a'])}</td><td>{_e(r['head_b'])}</td>"
                 f"<td>{r['rho']:+.2f}</td><td>{ci}</td><td class='l'>{_e(verdict)}</td></tr>")
        shown = f"**{verdict}**" if r["conflict"] else verdict
        md.append(f"| {r['head_a']} | {r['head_b']} | {r['rho']:+.2f} | {ci} | {shown} |")
    return h + ["</table>"], md + [""]
