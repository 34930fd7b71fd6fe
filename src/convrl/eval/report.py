"""Evaluation report: a standalone HTML page (figures inlined) and Markdown (figures as PNG files).

Sections: headline cards, use-case metrics with 95% CIs, reward heads against
held-out judges (with flagged reward-judge gaps), how far the judges agree with
people, reward heads that conflict on the baseline's replies, per-persona comparison,
multi-turn self-play (metrics and transcripts side by side), sample replies
side by side, every other metric, and how each number is computed::

    from convrl.eval.metrics import analyze
    from convrl.eval.report import build_report, write_report
    report = build_report(analyze(scores), "base model smollm2", selfplay=result)
    write_report(report, "out/report")   # report.html, report.md, figures/*.png
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from convrl.eval import plots
from convrl.eval.metrics import LABELS, TARGETS, USE_CASE, Analysis, target_gap
from convrl.eval.report_sections import conflicts_section, escape, judge_agreement_section
from convrl.eval.selfplay import SUMMARY_METRICS

LOWER_IS_BETTER = {"contradiction_rate", "degenerate_rate", "self_repetition", "unprompted_shift_rate", "persona_embed_std",
                   "repetition", "empty_rate", "contradictions", "cut_off"}
NO_DIRECTION = {"words", "turns", "conversations"}  # longer is neither better nor worse
SELFPLAY_LABELS = {
    "coherence": "Multi-turn coherence (0-1)", "persona_consistency": "Persona consistency across turns",
    "persona_drift": "Persona drift (2nd half - 1st half)", "contradiction_rate": "Turns contradicting persona/self",
    "self_repetition": "Turns repeating an earlier turn", "degenerate_rate": "Empty or garbled turns", "user_following": "Relevance to the user's turn",
    "unprompted_shift_rate": "Unprompted topic shifts", "pivot_followed": "Followed the scripted topic change",
    "engagement": "Engagement judge", "persona_embed_sim": "Encoder similarity to persona card",
    "persona_embed_std": "Spread of that similarity (lower = steadier)",
    "fact_recall": "Facts recalled later in self-play (name, preference, plan)",
    "dialogue_judge": "Dialogue judge: the whole conversation as people rate dialogues (0-1)",
    "reaction": "Satisfaction read from the simulated user's answers (1-5)"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:24px auto;padding:0 20px;
color:#202124;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;margin-top:36px;border-bottom:2px solid #e8eaed;padding-bottom:4px}
h3{font-size:16px;margin-top:22px}.sub{color:#5f6368;margin-top:0}
table{border-collapse:collapse;margin:10px 0 14px;font-size:14px;width:100%}
td,th{border-bottom:1px solid #e0e0e0;padding:6px 10px;text-align:right;vertical-align:top}
th{background:#f1f3f4;font-weight:600}td:first-child,th:first-child,.l{text-align:left}
.ci{color:#80868b;font-size:12px;white-space:nowrap}.up{color:#188038;font-weight:600}.down{color:#c5221f;font-weight:600}
.same{color:#5f6368}tr.flag td{background:#fce8e6}.badge{display:inline-block;border-radius:10px;padding:1px 9px;
font-size:12px;font-weight:600}.bad{background:#fce8e6;color:#a50e0e}.good{background:#e6f4ea;color:#137333}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px;margin:16px 0}
.card{border:1px solid #dadce0;border-radius:10px;padding:10px 14px}.card .k{font-size:12px;color:#5f6368}
.card .v{font-size:24px;font-weight:600}.card .b{font-size:12px;color:#5f6368}
img{max-width:100%;display:block;margin:8px 0 4px}.note{color:#5f6368;font-size:13px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:18px}.col h4{margin:6px 0}
.msg{border-radius:12px;padding:7px 11px;margin:6px 0;font-size:14px;white-space:pre-wrap;word-wrap:break-word}
.user{background:#f1f3f4;margin-right:40px}.assistant{background:#e8f0fe;margin-left:40px}
.msg .who{font-size:11px;color:#5f6368;display:block}.msg.warn{outline:2px solid #f28b82}
table.samples{table-layout:fixed}table.samples th{text-align:left}table.samples td{text-align:left;font-size:13px;white-space:pre-wrap;word-wrap:break-word}
.sc{display:block;color:#80868b;font-size:11px;margin-top:4px}details{margin:10px 0}summary{cursor:pointer;font-weight:600}
.promote{color:#137333}.reject{color:#a50e0e}.inconclusive{color:#b06000}code{background:#f1f3f4;padding:0 3px}
"""


@dataclass
class Report:
    markdown: str
    html: str
    figures: dict = field(default_factory=dict)   # name -> matplotlib Figure

    def close(self) -> None:
        """Free the figures (pyplot keeps every open figure alive)."""
        import matplotlib.pyplot as plt

        for fig in self.figures.values():
            plt.close(fig)


def _fig_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(metric: str, v: float) -> str:
    if v != v:
        return "n/a"
    if metric in USE_CASE and metric != "satisfaction":
        return f"{v:.1f}%"
    if metric == "cut_off":  # a 0-1 share per reply
        return f"{100 * v:.0f}%"
    return f"{v:.2f}" if metric in ("satisfaction", "words") else f"{v:.3f}"


def _delta(metric: str, d: float) -> tuple[str, str]:
    """Formatted difference and its CSS class (green when better, red when worse)."""
    if d != d:
        return "n/a", "same"
    better = -d if metric in LOWER_IS_BETTER else d
    cls = "up" if better > 1e-9 else "down" if better < -1e-9 else "same"
    if metric in NO_DIRECTION:
        cls = "same"
    if metric == "cut_off":
        return f"{100 * d:+.0f} pp", cls
    unit = " pp" if metric in USE_CASE and metric != "satisfaction" else ""
    return (f"{d:+.1f}{unit}" if unit else f"{d:+.3f}"), cls


def _target(metric: str, value: float) -> tuple[str, str]:
    """(markdown, html) of the use case's expected range and the gap to it, or empty strings without a target."""
    gap = target_gap(metric, value)
    if gap is None:
        return "", ""
    lo, hi = TARGETS[metric]
    unit, gap_unit = ("", "") if metric == "satisfaction" else ("%", " pp")
    rng = f"{lo:g}-{hi:g}{unit}"
    status = "within the expected range" if gap == 0 else f"gap {gap:+.1f}{gap_unit}"
    cls = "good" if gap >= 0 else "bad"
    return (f"; expected {rng}, {status}",
            f"<div class='b'>expected {rng} &middot; <span class='{cls}'>{status}</span></div>")


_e = escape


def _compare_rows(metrics, labels, value, models):
    """Rows of (label, per-model values, delta) for a baseline/candidate table."""
    rows = []
    for m in metrics:
        vals = [value(model, m) for model in models]
        if all(v is None for v in vals):
            continue
        d = (vals[-1][0] - vals[0][0]) if len(models) >= 2 and None not in (vals[0], vals[-1]) else float("nan")
        rows.append((m, labels.get(m, m), vals, d))
    return rows


def _table_html(rows, models, fmt=_fmt) -> str:
    head = "".join(f"<th>{_e(m)}</th>" for m in models) + ("<th>difference</th>" if len(models) >= 2 else "")
    out = [f"<table><tr><th>metric</th>{head}</tr>"]
    for m, label, vals, d in rows:
        cells = "".join("<td>n/a</td>" if v is None else
                        f"<td>{fmt(m, v[0])}" + (f" <span class='ci'>[{fmt(m, v[1])}, {fmt(m, v[2])}]</span>"
                                                 if len(v) > 1 else "") + "</td>" for v in vals)
        dt, cls = _delta(m, d)
        out.append(f"<tr><td>{_e(label)}</td>{cells}" + (f"<td class='{cls}'>{dt}</td>" if len(models) >= 2 else "")
                   + "</tr>")
    return "".join(out) + "</table>"


def _table_md(rows, models, fmt=_fmt) -> str:
    lines = ["| metric | " + " | ".join(models) + (" | difference |" if len(models) >= 2 else " |"),
             "|---" * (len(models) + 1 + (len(models) >= 2)) + "|"]
    for m, label, vals, d in rows:
        cells = [("n/a" if v is None else fmt(m, v[0]) + (f" [{fmt(m, v[1])}, {fmt(m, v[2])}]" if len(v) > 1 else ""))
                 for v in vals]
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {_delta(m, d)[0]} |" if len(models) >= 2 else " |"))
    return "\n".join(lines)


def _bubbles(conv: pd.DataFrame, notes: dict[int, str]) -> str:
    out = []
    for _, r in conv.iterrows():
        who = "user (simulated" + (", scripted" if r["scripted"] else "") + ")" if r["role"] == "user" else \
            f"assistant, turn {r['turn'] + 1}"
        warn = r["role"] == "assistant" and r["turn"] in notes
        text = r["text"] if str(r["text"]).strip() else "(empty reply)"
        out.append(f"<div class='msg {r['role']}{' warn' if warn else ''}'><span class='who'>{_e(who)}"
                   + (f" &middot; {_e(notes[r['turn']])}" if warn else "") + f"</span>{_e(text)}</div>")
    return "".join(out)


def build_report(a: Analysis, baseline_desc: str, selfplay=None, decision: dict | None = None,
                 n_samples: int = 6, title: str = "convrl evaluation report", no_repeat_ngram_size: int = 0,
                 precision: str = "fp32") -> Report:
    """``a``: ``metrics.analyze`` output; ``selfplay``: a ``selfplay.SelfPlayResult`` or None;
    ``no_repeat_ngram_size``: the decoding's repeated-n-gram ban (stated in the intro; 0 = none);
    ``precision``: the weights' dtype every model decoded in (bf16 or fp32, stated in the intro)."""
    scores, s = a.scores, a.summary
    models = plots.model_order(scores["model"])
    n_prompts = scores["prompt_id"].nunique()
    ci = a.ci.set_index(["model", "metric"])

    def ci_value(model, m):
        return tuple(ci.loc[(model, m), ["mean", "lo", "hi"]]) if (model, m) in ci.index else None

    figs = {"use_case": plots.use_case_figure(a.ci),
            "reward_vs_judge": plots.gaps_figure(a.gaps) if len(a.gaps) else None,
            "reward_judge_scatter": plots.scatter_figure(scores) if len(a.gaps) else None,
            "heads": plots.heads_figure(a.ci), "per_persona": plots.persona_figure(a.persona)}
    if selfplay is not None and len(selfplay.per_turn):
        figs["selfplay"] = plots.selfplay_figure(selfplay.per_turn)
    figs = {k: v for k, v in figs.items() if v is not None}
    b64 = {k: _fig_b64(f) for k, f in figs.items()}
    img = lambda k, alt: f"<img alt='{alt}' src='data:image/png;base64,{b64[k]}'>" if k in b64 else ""  # noqa: E731
    mdimg = lambda k, alt: f"![{alt}](figures/{k}.png)" if k in b64 else ""  # noqa: E731

    decoding = (f"greedy {precision} decoding with no repeated {no_repeat_ngram_size}-token n-gram (as convrl chat)"
                if no_repeat_ngram_size > 0 else f"greedy {precision} decoding")
    intro = (f"Baseline: <b>{_e(baseline_desc)}</b>. {n_prompts} held-out prompts (test split), {decoding}, "
             f"the same prompts, personas and seeds for every model. Rates count replies whose held-out judge "
             f"score is at least {a.threshold:g}.")
    h = [f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
         f"<title>{_e(title)}</title><style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class='sub'>{intro}</p>"]
    md = [f"# {title}", "", intro.replace("<b>", "**").replace("</b>", "**"), ""]
    if decision:
        oc = _e(decision.get("outcome", "?"))
        h.append(f"<h2>Decision: <span class='{oc}'>{oc}</span></h2><ul>"
                 + "".join(f"<li>{_e(r)}</li>" for r in decision.get("reasons", [])) + "</ul>")
        md += [f"## Decision: **{decision.get('outcome', '?')}**", ""]
        md += [f"- {r}" for r in decision.get("reasons", [])] + [""]

    # Headline cards: the candidate's number large, the baseline's and the difference below it.
    n_gaps = int(a.gaps["flagged"].sum()) if len(a.gaps) else 0
    cards, glance, sp = [], [], (selfplay.summary if selfplay is not None else {})
    for m in USE_CASE + ("cut_off", "coherence", "fact_recall", "self_repetition"):
        src = sp if m in SELFPLAY_LABELS else s
        c, b = src.get(f"candidate/{m}"), src.get(f"baseline/{m}")
        if c is None:
            continue
        label = (SELFPLAY_LABELS[m] if m in SELFPLAY_LABELS
                 else "Replies cut at the token budget" if m == "cut_off" else LABELS[m])
        dt, cls = _delta(m, c - b) if b is not None else ("", "same")
        target_md, target_html = _target(m, c)
        glance.append(f"- {label}: **{_fmt(m, c)}** (baseline {_fmt(m, b) if b is not None else 'n/a'}, {dt})"
                      + target_md)
        cards.append(f"<div class='card'><div class='k'>{_e(label)}</div><div class='v'>{_fmt(m, c)}</div>"
                     f"<div class='b'>baseline {_fmt(m, b) if b is not None else 'n/a'} &middot; "
                     f"<span class='{cls}'>{dt}</span></div>{target_html}</div>")
    gap_badge = (f"<span class='badge bad'>{n_gaps} reward-judge gap{'s' * (n_gaps != 1)}</span>" if n_gaps
                 else "<span class='badge good'>no reward-judge gap</span>")
    cards.append(f"<div class='card'><div class='k'>Reward hacking check</div><div class='v'>{gap_badge}</div>"
                 "<div class='b'>reward heads vs held-out judges</div></div>")
    h.append("<h2>At a glance (candidate)</h2><div class='cards'>" + "".join(cards) + "</div>")
    glance.append(f"- Reward hacking check: {n_gaps} reward-judge gap(s)"
                  + (" **(read the gap section)**" if n_gaps else ""))
    md += ["## At a glance (candidate)", ""] + glance + [""]

    uc_rows = _compare_rows(USE_CASE, LABELS, ci_value, models)
    h += ["<h2>Use-case metrics</h2>", _table_html(uc_rows, models), img("use_case", "use-case metrics"),
          "<p class='note'>Brackets: bootstrap 95% CI of the mean over replies. Difference: candidate - baseline "
          "(pp = percentage points).</p>"]
    md += ["## Use-case metrics", "", _table_md(uc_rows, models), "", mdimg("use_case", "use-case metrics"), ""]

    if len(a.gaps):
        h.append("<h2>Reward heads vs held-out judges</h2><p>Each reward head trained the policy; its judge scores the "
                 "same quality with a different model and data. A head that improves while its judge does not is "
                 "flagged: the policy may be exploiting the reward model.</p>" + gap_badge)
        h.append("<table><tr><th>quality</th><th>reward head &Delta;</th><th>judge</th><th>judge &Delta;</th>"
                 "<th>agreement (Spearman)</th><th class='l'>verdict</th></tr>")
        md += ["## Reward heads vs held-out judges", "",
               "| quality | reward head Δ | judge | judge Δ | agreement | verdict |", "|---|---|---|---|---|---|"]
        for _, g in a.gaps.iterrows():
            rd = f"{g['reward_diff']:+.3f} <span class='ci'>[{g['reward_lo']:+.3f}, {g['reward_hi']:+.3f}]</span>"
            jd = f"{g['judge_diff']:+.3f} <span class='ci'>[{g['judge_lo']:+.3f}, {g['judge_hi']:+.3f}]</span>"
            h.append(f"<tr class='{'flag' if g['flagged'] else ''}'><td>{_e(g['quality'])}</td><td>{rd}</td>"
                     f"<td>{_e(g['judge'])}</td><td>{jd}</td><td>{_fmt('agreement', g['agreement'])}</td>"
                     f"<td class='l'>{'&#9888; ' if g['flagged'] else ''}{_e(g['verdict'])}</td></tr>")
            md.append(f"| {g['quality']} | {g['reward_diff']:+.3f} [{g['reward_lo']:+.3f}, {g['reward_hi']:+.3f}] | "
                      f"{g['judge']} | {g['judge_diff']:+.3f} [{g['judge_lo']:+.3f}, {g['judge_hi']:+.3f}] | "
                      f"{_fmt('agreement', g['agreement'])} | {'**FLAG** ' if g['flagged'] else ''}{g['verdict']} |")
        h += ["</table>", img("reward_vs_judge", "reward vs judge differences"),
              img("reward_judge_scatter", "reward vs judge per reply"), img("heads", "reward heads")]
        md += ["", mdimg("reward_vs_judge", "reward vs judge"), mdimg("reward_judge_scatter", "scatter"),
               mdimg("heads", "reward heads"), ""]

    # ---- issue 17 (rewards engineer): how far each judge used here agrees with people.
    ah, amd = judge_agreement_section([c for c in scores.columns if c.startswith("judge_")])
    h += ah
    md += amd
    ch, cmd = conflicts_section(a.conflicts)
    h += ch
    md += cmd

    pt = a.persona.reset_index()
    pcols = [c for c in ("replies", "satisfaction") + tuple(r for r in USE_CASE if r != "satisfaction")
             + ("composite", "judge_composite") if c in pt]
    ptab = pt[["persona_id", "model"] + pcols].copy()
    ptab["model"] = pd.Categorical(ptab["model"], models, ordered=True)
    ptab = ptab.sort_values(["persona_id", "model"])
    h.append("<h2>Per persona</h2><table><tr><th>persona</th><th class='l'>model</th>"
             + "".join(f"<th>{_e(c.replace('_', ' '))}</th>" for c in pcols) + "</tr>")
    for _, r in ptab.iterrows():
        h.append(f"<tr><td>{_e(r['persona_id'])}</td><td class='l'>{_e(r['model'])}</td>"
                 + "".join(f"<td>{int(r[c]) if c == 'replies' else _fmt(c, r[c])}</td>" for c in pcols) + "</tr>")
    h += ["</table>", img("per_persona", "per persona")]
    md += ["## Per persona", "", ptab.round(3).to_markdown(index=False), "", mdimg("per_persona", "per persona"), ""]

    if selfplay is not None and len(selfplay.per_conv):
        pc = selfplay.per_conv
        sp_rows = _compare_rows(SUMMARY_METRICS, SELFPLAY_LABELS,
                                lambda model, m: (sp[f"{model}/{m}"],) if f"{model}/{m}" in sp else None, models)
        intro_sp = (f"{int(pc['conversation'].nunique())} conversation(s) per model, "
                    f"{int(pc['turns'].max())} assistant turns each, with a simulated user (the frozen base "
                    "model prompted with a user profile and goal); the user changes the subject halfway (scripted).")
        h += ["<h2>Multi-turn self-play</h2>", f"<p>{_e(intro_sp)}</p>", _table_html(sp_rows, models),
              img("selfplay", "self-play by turn")]
        md += ["## Multi-turn self-play", "", intro_sp, "", _table_md(sp_rows, models), "",
               mdimg("selfplay", "self-play"), ""]
        tr, notes_df = selfplay.transcripts, selfplay.per_turn
        for c in sorted(tr["conversation"].unique()):
            first = tr[tr["conversation"] == c].iloc[0]
            head = f"Conversation {c + 1}: persona {first['persona_id']}, user {first['user_id']}"
            h.append(f"<details{' open' if c == 0 else ''}><summary>{_e(head)}</summary><div class='cols'>")
            md += [f"### {head}", ""]
            for model in models:
                conv = tr[(tr["conversation"] == c) & (tr["model"] == model)]
                nd = notes_df[(notes_df["conversation"] == c) & (notes_df["model"] == model)
                              & (notes_df["contradictions"] > 0)]
                notes = dict(zip(nd["turn"], nd["contradiction_notes"]))
                h.append(f"<div class='col'><h4>{_e(model)}</h4>{_bubbles(conv, notes)}</div>")
                md += [f"**{model}**", ""] + [f"- *{r['role']}*: {str(r['text'])[:300] or '(empty)'}"
                                              for _, r in conv.iterrows()] + [""]
            h.append("</div></details>")

    wide = scores.pivot(index="prompt_id", columns="model", values="response")
    meta = scores.drop_duplicates("prompt_id").set_index("prompt_id")
    sc = scores.set_index(["prompt_id", "model"])
    sample_ids = list(wide.index[:n_samples])
    h.append("<h2>Sample replies side by side</h2><table class='samples'><tr><th style='width:26%'>user (persona, "
             "emotion)</th>" + "".join(f"<th>{_e(m)}</th>" for m in models) + "</tr>")
    md += ["## Sample replies side by side", ""]
    for pid in sample_ids:
        row = meta.loc[pid]
        emo = row.get("judge_user_emotion", row.get("user_emotion", ""))
        h.append(f"<tr><td>{_e(str(row['context'])[:300])}<span class='sc'>{_e(row['persona_id'])} &middot; "
                 f"user seems {_e(emo)}</span></td>")
        md.append(f"**{pid}** ({row['persona_id']}, user seems {emo}) user: _{str(row['context'])[:300]}_")
        for m in models:
            r = sc.loc[(pid, m)]
            judge = f" &middot; judges {r['judge_composite']:.2f}" if "judge_composite" in r else ""
            text = str(wide.loc[pid, m]) or "(empty reply)"
            h.append(f"<td>{_e(text[:500])}<span class='sc'>reward {r['composite']:.2f}{judge}</span></td>")
            md.append(f"- {m}: {text[:400]}")
        h.append("</tr>")
        md.append("")
    h.append("</table>")

    other = [k.split("/", 1)[1] for k in s if k.startswith(f"{models[0]}/")]
    other = [m for m in other if m not in USE_CASE]
    o_rows = _compare_rows(other, {}, lambda model, m: (s[f"{model}/{m}"],) if f"{model}/{m}" in s else None, models)
    h += ["<h2>All metrics (means)</h2>", _table_html(o_rows, models)]
    md += ["## All metrics (means)", "", _table_md(o_rows, models), ""]
    h.append(_methods_html(a.threshold))
    md += ["## How to read this report", "", METHODS_MD.format(t=a.threshold)]
    h.append("</body></html>")
    return Report("\n".join(md), "".join(h), figs)


METHODS_MD = """* **Reward heads** (`composite`, `quality`, `personality`, `engagement`, `relevance`) are the
  training signal: MiniLM cosine similarities, the trained emotion head with tone prototypes, and the base
  LM's likelihood.
* **Held-out judges** (`judge_*`) were never used as rewards: VADER + tone phrases (emotion), word and
  character TF-IDF overlap or an LSA topic model of the train conversations (relevance), persona facts, trait
  markers and contradiction patterns (personality), open questions, second-person share, specificity and
  diversity (engagement), a character 4-gram LM on human chat text, word coverage and compressibility
  (fluency). See `convrl.eval.judges`.
* **Rates** count replies whose judge score is at least {t:g}. **Predicted satisfaction** is
  `1 + 4 * judge_composite` (linear and uncalibrated).
* A **reward-judge gap** is flagged when a head's paired gain has a 95% CI above 0 while its judge's does not,
  or the judge confirms less than half of the gain.
* **Self-play**: the frozen base model plays a user with a profile and a goal; both sides see only the last
  messages (the context window); the user changes the subject halfway with a scripted message.
"""


def _methods_html(threshold: float) -> str:
    text = METHODS_MD.format(t=threshold).replace("\n  ", " ")
    items = [line.strip()[2:] for line in text.splitlines() if line.strip()]
    conv = [re.sub(r"`([^`]+)`", r"<code>\1</code>", re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", html.escape(i)))
            for i in items]
    return "<h2>How to read this report</h2><ul>" + "".join(f"<li>{c}</li>" for c in conv) + "</ul>"


def write_report(report: Report, out_dir: str | Path) -> Path:
    """report.html, report.md and figures/*.png under ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, fig in report.figures.items():
        fig.savefig(out / "figures" / f"{name}.png", dpi=110)
    (out / "report.md").write_text(report.markdown)
    (out / "report.html").write_text(report.html)
    return out / "report.html"
