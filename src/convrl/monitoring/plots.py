"""Monitoring figures: each metric per day, one line per model version, the current window shaded.

Built on ``matplotlib.figure.Figure`` (no pyplot state), so a server or a
scheduler thread can draw them; the monitoring stage logs them to MLflow::

    from convrl.monitoring.plots import daily_figure
    daily_figure(daily, ["composite", "judge_composite", "rating"], current_start).savefig("daily.png")
"""

from __future__ import annotations

import pandas as pd

LABELS = {"composite": "reward composite", "judge_composite": "judge composite", "gap": "reward - judge gap",
          "empty": "empty replies", "uncivil": "replies insulting the user", "repetition": "repetition rate",
          "rating": "mean rating (1-5)",
          "thumbs": "thumbs-up rate", "reaction": "satisfaction read from answers (1-5)", "latency_s": "latency (s)"}
PANELS = ("composite", "judge_composite", "gap", "rating", "thumbs", "reaction", "empty", "uncivil", "repetition",
          "latency_s")


def daily_figure(daily: pd.DataFrame, metrics=PANELS, current_start: pd.Timestamp | None = None):
    """A grid of small multiples over days; missing metrics (no ratings yet) are left out."""
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if m in daily.columns and daily[m].notna().any()]
    if not metrics:
        raise ValueError("daily_figure: the daily table has no metric with data to plot")
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(3.4 * cols, 2.6 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    days = pd.to_datetime(sorted(daily["day"].unique()))
    for ax, metric in zip(axes, metrics):
        for version, grp in daily.groupby("model_version", sort=True):
            g = grp.sort_values("day")
            ax.plot(pd.to_datetime(g["day"]), g[metric], marker="o", ms=3, label=f"v{version}")
        if current_start is not None:
            ax.axvspan(pd.Timestamp(current_start).tz_localize(None).normalize(), days.max() + pd.Timedelta(days=1),
                       color="#fbbc04", alpha=0.15, lw=0)
        ax.set_title(LABELS.get(metric, metric), fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(handles), 6), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig
