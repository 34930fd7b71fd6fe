"""Figures for the evaluation report (matplotlib, Agg backend; each function returns a Figure).

Colours are fixed per model (baseline grey, candidate blue) so every plot in
the report reads the same way; error bars are bootstrap 95% CIs::

    from convrl.eval.plots import use_case_figure
    use_case_figure(analysis.ci).savefig("use_case.png")
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from convrl.eval.judges import JUDGE_FOR_HEAD

COLORS = {"baseline": "#8a9199", "candidate": "#1a73e8"}
EXTRA = ["#e37400", "#188038", "#a142f4", "#d93025"]
RED, GREEN = "#c5221f", "#188038"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titleweight": "bold", "axes.titlesize": 10})
    return plt


def _finish(fig, ax) -> None:
    """One legend above the panels, where it cannot cover a bar or a point."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.9))


def model_order(models) -> list[str]:
    """Baseline first, candidate second, anything else after: the order every table and plot uses."""
    models = list(dict.fromkeys(models))
    return sorted(models, key=lambda m: ({"baseline": 0, "candidate": 1}.get(m, 2), models.index(m)))


def color(model: str, i: int = 0) -> str:
    return COLORS.get(model, EXTRA[i % len(EXTRA)])


def _grouped_bars(ax, ci: pd.DataFrame, metrics: list[str], labels: list[str], horizontal: bool = False):
    models = model_order(ci["model"])
    width = 0.8 / max(1, len(models))
    pos = np.arange(len(metrics))
    for i, m in enumerate(models):
        sub = ci[ci["model"] == m].set_index("metric").reindex(metrics)
        mean = sub["mean"].to_numpy(float)
        err = np.vstack([mean - sub["lo"].to_numpy(float), sub["hi"].to_numpy(float) - mean]).clip(0)
        x = pos + (i - (len(models) - 1) / 2) * width
        if horizontal:
            ax.barh(x, mean, width, xerr=err, capsize=3, label=m, color=color(m, i))
        else:
            ax.bar(x, mean, width, yerr=err, capsize=3, label=m, color=color(m, i))
    if horizontal:
        ax.set_yticks(pos, labels)
        ax.invert_yaxis()
    else:
        ax.set_xticks(pos, labels)


def use_case_figure(ci: pd.DataFrame):
    """The use case's rates (%) and predicted satisfaction (1-5), per model, with 95% CIs."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    rates = ["engagement_rate", "relevance_rate", "personality_consistency", "emotional_appropriateness"]
    rates = [r for r in rates if r in set(ci["metric"])]
    labels = ["engagement", "relevance", "personality\nconsistency", "emotional\nappropriateness"]
    _grouped_bars(a1, ci, rates, labels[:len(rates)])
    a1.set_ylim(0, 100)
    a1.set_ylabel("% of replies above threshold")
    a1.set_title("Use-case rates (95% CI)")
    if "satisfaction" in set(ci["metric"]):
        _grouped_bars(a2, ci, ["satisfaction"], ["satisfaction"])
        a2.set_ylim(1, 5)
        a2.set_title("Predicted satisfaction (1-5)")
    else:
        a2.axis("off")
    _finish(fig, a1)
    return fig


def heads_figure(ci: pd.DataFrame):
    """Reward heads and the judge composite, per model, with 95% CIs."""
    plt = _plt()
    metrics = [m for m in ("composite", "quality", "personality", "engagement", "relevance", "judge_composite")
               if m in set(ci["metric"])]
    fig, ax = plt.subplots(figsize=(9.5, 3.2))
    _grouped_bars(ax, ci, metrics, [m.replace("_", "\n") for m in metrics])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean score")
    ax.set_title("Reward heads (training signal) and judge composite (held out)")
    _finish(fig, ax)
    return fig


def gaps_figure(gaps: pd.DataFrame):
    """Candidate - baseline for each reward head next to its held-out judge; flagged gaps in red."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.5, 3.2))
    pos = np.arange(len(gaps))
    for off, kind, col in ((-0.2, "reward", "#1a73e8"), (0.2, "judge", "#e37400")):
        mean = gaps[f"{kind}_diff"].to_numpy(float)
        err = np.vstack([mean - gaps[f"{kind}_lo"].to_numpy(float), gaps[f"{kind}_hi"].to_numpy(float) - mean]).clip(0)
        ax.bar(pos + off, mean, 0.4, yerr=err, capsize=3, color=col,
               label="reward head" if kind == "reward" else "held-out judge")
    ax.axhline(0, color="#444", lw=0.8)
    ax.set_xticks(pos, [f"{q}\n(vs {j.replace('judge_', '')} judge)" + ("\nREWARD-JUDGE GAP" if f else "")
                        for q, j, f in zip(gaps["quality"], gaps["judge"], gaps["flagged"])])
    for label, flagged in zip(ax.get_xticklabels(), gaps["flagged"]):
        if flagged:
            label.set_color(RED)
            label.set_fontweight("bold")
    ax.set_ylabel("candidate - baseline (95% CI)")
    ax.set_title("Does each reward gain survive a held-out judge?")
    _finish(fig, ax)
    return fig


def scatter_figure(scores: pd.DataFrame):
    """Per reply: each reward head against its judge, coloured by model."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(JUDGE_FOR_HEAD), figsize=(10, 2.8), sharey=True)
    models = model_order(scores["model"])
    for ax, (head, judge) in zip(np.atleast_1d(axes), JUDGE_FOR_HEAD.items()):
        for i, m in enumerate(models):
            sub = scores[scores["model"] == m]
            if judge in sub:
                ax.scatter(sub[head], sub[judge], s=12, alpha=0.6, color=color(m, i), label=m)
        ax.plot([0, 1], [0, 1], color="#bbb", lw=0.8, ls="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"reward: {head}")
        ax.set_title(head)
    np.atleast_1d(axes)[0].set_ylabel("held-out judge")
    _finish(fig, np.atleast_1d(axes)[0])
    return fig


def persona_figure(persona: pd.DataFrame):
    """Predicted satisfaction and composite reward per persona and model."""
    plt = _plt()
    cols = [c for c in ("satisfaction", "composite") if c in persona.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(9.5, 3.0))
    personas = list(dict.fromkeys(persona.index.get_level_values(0)))
    models = model_order(persona.index.get_level_values(1))
    width = 0.8 / max(1, len(models))
    for ax, col in zip(np.atleast_1d(axes), cols):
        for i, m in enumerate(models):
            vals = [persona[col].get((p, m), np.nan) for p in personas]
            ax.bar(np.arange(len(personas)) + (i - (len(models) - 1) / 2) * width, vals, width, label=m,
                   color=color(m, i))
        ax.set_xticks(np.arange(len(personas)), [p.replace("_", "\n") for p in personas])
        ax.set_title("predicted satisfaction (1-5)" if col == "satisfaction" else "composite reward")
        if col == "satisfaction":
            ax.set_ylim(1, 5)
        else:
            ax.set_ylim(0, 1)
    _finish(fig, np.atleast_1d(axes)[0])
    return fig


def selfplay_figure(per_turn: pd.DataFrame):
    """Persona score and relevance to the user turn by turn, averaged over conversations."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 2.9), sharex=True)
    for i, m in enumerate(model_order(per_turn["model"])):
        sub = per_turn[per_turn["model"] == m].groupby("turn")[["persona_score", "user_following"]].mean()
        axes[0].plot(sub.index + 1, sub["persona_score"], marker="o", color=color(m, i), label=m)
        axes[1].plot(sub.index + 1, sub["user_following"], marker="o", color=color(m, i), label=m)
    axes[0].set_title("personality judge by turn")
    axes[1].set_title("relevance to the user's turn")
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("assistant turn")
    _finish(fig, axes[0])
    return fig
