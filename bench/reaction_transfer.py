"""Does the reaction model carry over from task sessions to persona chat? Fitted on one, checked on ConvAI2.

``convrl monitor`` reads each served reply's predicted satisfaction from the user's next turn
(``convrl.rewards.reactions.ReactionModel``). The model learns from the user-satisfaction sessions (task-oriented:
restaurants, trains, films), while convrl serves persona chat. This fits it on the training side of those sessions
(outside ``held_out(id, 0.3, 13)``) and correlates its prediction for every rated ConvAI2 bot reply that a person
answered (the reply and the human's next turn) with that reply's thumbs, on ConvAI2's held-out dialogues, with a
95% bootstrap CI resampled by dialogue; the reply's length beside it as a baseline::

    .venv/bin/python bench/reaction_transfer.py            # a few seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def thumbs_with_answers(dialogues: list[dict]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Rated bot replies that the person answered: (replies, answers, thumbs, dialogue ids)."""
    from convrl.rewards.reactions import replies_with_answers

    replies, answers, thumbs, groups = [], [], [], []
    for d in dialogues:
        for m, answer in replies_with_answers(d["messages"]):
            thumb = (m.get("ratings") or {}).get("thumb")
            if thumb is not None and answer is not None:
                replies.append(m["content"])
                answers.append(answer)
                thumbs.append(float(thumb))
                groups.append(d["id"])
    return replies, answers, np.array(thumbs), np.array(groups)


def clustered_spearman(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int = 1000,
                       seed: int = 13) -> tuple[float, float, float]:
    """Spearman with the meta-eval's 95% CI, whole dialogues resampled (``convrl.meta_eval.stats``)."""
    from convrl.meta_eval.stats import bootstrap_weights, correlate

    r = correlate(np.asarray(x, float), np.asarray(y, float), bootstrap_weights(groups, n_boot, seed))
    return r["spearman"], r["spearman_ci"][0], r["spearman_ci"][1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--n-bootstrap", type=int, default=1000)
    a = p.parse_args(argv)
    data = Path(a.data)
    if not (data / "user_satisfaction").is_dir() or not (data / "convai2_human_eval").is_dir():
        print(f"needs user_satisfaction and convai2_human_eval under {data}")
        return 2
    from convrl.rewards.dialogue import rated_dialogues
    from convrl.rewards.human_data import held_out
    from convrl.rewards.reactions import ReactionModel

    train = [d for d in rated_dialogues([str(data / "user_satisfaction")]) if not held_out(d["id"], 0.3, 13)]
    model = ReactionModel.fit([d["messages"] for d in train])
    test = [d for d in rated_dialogues([str(data / "convai2_human_eval")]) if held_out(d["id"], 0.3, 13)]
    replies, answers, thumbs, groups = thumbs_with_answers(test)
    print(f"reaction model: {model.exchanges_fitted} rated exchanges of {len(train)} training-side sessions; "
          f"ConvAI2 held out: {len(replies)} thumbed replies that a person answered, "
          f"{len(np.unique(groups))} dialogues")
    print("| predictor | Spearman with thumbs [95% CI] |")
    print("|---|---|")
    for name, x in (("reaction model (reply + the person's next turn)", model.predict(replies, answers)),
                    ("reply length (words)", np.array([len(r.split()) for r in replies], float))):
        rho, lo, hi = clustered_spearman(x, thumbs, groups, a.n_bootstrap)
        print(f"| {name} | {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
