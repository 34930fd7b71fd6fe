"""Evaluation report: Markdown and a standalone HTML page with tables, plots and samples."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd

from convrl.eval.evaluate import METRICS, bootstrap_mean_ci, per_persona


def metrics_figure(scores: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(scores["model"]))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        grp = scores[scores["model"] == m]
        means = [grp[k].mean() for k in METRICS]
        cis = [bootstrap_mean_ci(grp[k].to_numpy(), seed=1) for k in METRICS]
        err = np.array([[mu - lo for mu, (lo, _) in zip(means, cis)], [hi - mu for mu, (_, hi) in zip(means, cis)]])
        ax.bar(np.arange(len(METRICS)) + i * width, means, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(np.arange(len(METRICS)) + width * (len(models) - 1) / 2)
    ax.set_xticklabels(METRICS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean score (95% CI)")
    ax.set_title("Held-out reward heads: candidate vs baseline")
    ax.legend()
    fig.tight_layout()
    return fig


def _fig_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def build_report(scores: pd.DataFrame, summary: dict, baseline_desc: str, decision: dict | None = None,
                 n_samples: int = 6) -> tuple[str, str, object]:
    """Returns (markdown, html, matplotlib figure)."""
    models = list(dict.fromkeys(scores["model"]))
    table = pd.DataFrame({m: [summary.get(f"{m}/{k}", float("nan")) for k in
                              METRICS + ("fluency", "repetition", "appropriateness", "distinct_2", "words")]
                          for m in models},
                         index=list(METRICS) + ["fluency", "repetition", "appropriateness", "distinct_2", "words"])
    persona = per_persona(scores)
    wide = scores.pivot(index="prompt_id", columns="model", values="response")
    ctx = scores.drop_duplicates("prompt_id").set_index("prompt_id")[["persona_id", "context"]]
    samples = ctx.join(wide).head(n_samples)
    md = [f"# convrl evaluation report", "", f"Baseline: **{baseline_desc}**. Prompts: {scores['prompt_id'].nunique()} "
          "held-out (test split), greedy decoding, same prompts and personas for every model.", ""]
    if decision:
        md += [f"## Decision: **{decision.get('outcome', '?')}**", ""] + [f"- {r}" for r in decision.get("reasons", [])] + [""]
    md += ["## Metrics (means)", "", table.round(4).to_markdown(), "", "## Composite by persona", "",
           persona.round(4).to_markdown(), "", "## Samples", ""]
    for pid, row in samples.iterrows():
        md.append(f"**{pid}** ({row['persona_id']}) user: _{row['context'][:300]}_")
        for m in models:
            md.append(f"- {m}: {row[m][:400]}")
        md.append("")
    fig = metrics_figure(scores)
    css = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
           "th{background:#f3f3f3}.s td{text-align:left;vertical-align:top}.promote{color:#137333}"
           ".reject{color:#a50e0e}.inconclusive{color:#b06000}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>convrl evaluation</title><style>{css}</style>"
             "</head><body><h1>convrl evaluation report</h1>",
             f"<p>Baseline: <b>{html.escape(baseline_desc)}</b>. {scores['prompt_id'].nunique()} held-out prompts, "
             "greedy decoding, same prompts and personas for every model.</p>"]
    if decision:
        oc = html.escape(str(decision.get("outcome", "?")))
        parts.append(f"<h2>Decision: <span class='{oc}'>{oc}</span></h2><ul>"
                     + "".join(f"<li>{html.escape(r)}</li>" for r in decision.get("reasons", [])) + "</ul>")
    parts += ["<h2>Metrics</h2>", table.round(4).to_html(), f"<img alt='metrics' src='data:image/png;base64,{_fig_b64(fig)}'>",
              "<h2>Composite by persona</h2>", persona.round(4).to_html(), "<h2>Samples side by side</h2>",
              "<table class='s'><tr><th>prompt</th><th>persona</th><th>user</th>"
              + "".join(f"<th>{html.escape(m)}</th>" for m in models) + "</tr>"]
    for pid, row in samples.iterrows():
        parts.append(f"<tr><td>{pid}</td><td>{html.escape(row['persona_id'])}</td><td>{html.escape(row['context'][:300])}</td>"
                     + "".join(f"<td>{html.escape(row[m][:400])}</td>" for m in models) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(md), "".join(parts), fig
