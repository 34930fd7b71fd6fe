"""Head terms against people's ratings on the *training sides* only: where the untrained head formulas are chosen.

The meta-eval's held-out sides and the evaluation-only sets (Predictive Engagement, HolisticEval: DailyDialog
test queries) are never read here, so a formula picked from this table is not tuned on what
``bench/reward_agreement.py`` reports. Sets: ConvAI2 and user-satisfaction dialogues outside
``held_out(id, 0.3, 13)`` (``--max-items`` each, ``--per-dialogue`` rated turns per dialogue, 3 unless told)
and ToxiChat *train*. Prints Spearman per term and head, response level, or dialogue level for ratings
constant within a dialogue: twice, scoring each dialogue by the mean over its turns and by the mean of its
``DIALOGUE_TOP_K`` best turns (the meta-eval's rule, ``convrl.meta_eval.stats``, chosen from this table with
``--per-dialogue 0``)::

    .venv/bin/python bench/reward_head_dev.py --max-items 1500 --max-toxichat 1200
    .venv/bin/python bench/reward_head_dev.py --per-dialogue 0 --max-items 5000 --max-toxichat 1200
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np

TERMS = ("composite", "composite_z", "quality", "engagement", "personality", "relevance", "coherence",
         "appropriateness", "substance", "question", "length")


def _columns(scorer, items: list[dict]) -> dict[str, np.ndarray]:
    from convrl.rewards.text_signals import substance_score
    from convrl.rewards.human_data import score_items

    cols = score_items(scorer, items, progress=True)
    responses = [it["response"] for it in items]
    cols["substance"] = np.array([substance_score(r) for r in responses])
    cols["question"] = np.array(["?" in r for r in responses], dtype=float)
    cols["length"] = np.array([len(re.findall(r"\w+", r)) for r in responses], dtype=float)
    from convrl.config import DEFAULT_WEIGHTS

    # The use-case weights over heads standardised on the scored set (a head's spread no longer sets its say).
    z = {h: (cols[h] - cols[h].mean()) / cols[h].std() for h in DEFAULT_WEIGHTS if cols[h].std() > 0}
    cols["composite_z"] = sum(DEFAULT_WEIGHTS[h] * v for h, v in z.items()) / sum(DEFAULT_WEIGHTS[h] for h in z)
    return cols


def _rho(cols: dict, items: list[dict], rating: str, top_k: int = 0) -> dict[str, float]:
    """Spearman per term; at dialogue level each dialogue scores the mean of its ``top_k`` best turns (0 = all)."""
    from scipy.stats import spearmanr

    from convrl.meta_eval.stats import dialogue_scores

    idx = [i for i, it in enumerate(items) if rating in it["ratings"]]
    groups: dict[str, list[int]] = {}
    for i in idx:
        groups.setdefault(items[i]["group"], []).append(i)
    dialogue_level = len(groups) < len(idx) and all(
        len({items[i]["ratings"][rating] for i in g}) == 1 for g in groups.values())
    units = list(groups.values()) if dialogue_level else [[i] for i in idx]
    y = np.array([items[u[0]]["ratings"][rating] for u in units])
    out = {}
    flat = np.concatenate(units)
    inv = np.repeat(np.arange(len(units)), [len(u) for u in units])
    for t in TERMS:
        x = dialogue_scores(cols[t][flat], inv, top_k or len(flat))
        out[t] = float(spearmanr(x, y).statistic) if x.std() > 0 else float("nan")
    out["_level"], out["_n"] = ("dialogue" if dialogue_level else "response"), len(units)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--max-items", type=int, default=1500)
    p.add_argument("--max-toxichat", type=int, default=1200)
    p.add_argument("--per-dialogue", type=int, default=3,
                   help="rated turns per dialogue, spread evenly (0 = every assistant turn: the whole conversation)")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: the machine is shared
    from convrl import models
    from convrl.meta_eval.stats import DIALOGUE_TOP_K
    from convrl.rewards.encoder import load_encoder
    from convrl.rewards.heads import RewardScorer
    from convrl.rewards.human_data import convai2_items, held_out, satisfaction_items
    from convrl.rewards.rated_sets import toxichat_items

    data = Path(a.data)
    scorer = RewardScorer(load_encoder(models.resolve_encoder("all-minilm-l6-v2"), precision="auto"), None, None)
    sets = {
        "convai2 (train side)": ([it for it in convai2_items(data / "convai2_human_eval", per_dialogue=a.per_dialogue)[0]
                                  if not held_out(it["group"], 0.3, 13)][:a.max_items],
                                 ("thumb", "dialogue_score", "profile_match")),
        "user_satisfaction (train side)": ([it for it in satisfaction_items(data / "user_satisfaction", per_dialogue=a.per_dialogue)[0]
                                            if not held_out(it["group"], 0.3, 13)][:a.max_items],
                                           ("satisfaction", "overall")),
        "toxichat (train)": (toxichat_items(data / "toxichat", "train")[0][:a.max_toxichat], ("plausible", "safe")),
    }
    print("| set | rating | level | n | " + " | ".join(TERMS) + " |")
    print("|" + "---|" * (4 + len(TERMS)))
    for name, (items, ratings) in sets.items():
        cols = _columns(scorer, items)
        for rating in ratings:
            for k in (0, DIALOGUE_TOP_K):
                r = _rho(cols, items, rating, k)
                if k and r["_level"] != "dialogue":
                    continue
                level = r["_level"] + (f" (best {k})" if k else " (mean)" if r["_level"] == "dialogue" else "")
                print(f"| {name} | {rating} | {level} | {r['_n']} | " + " | ".join(f"{r[t]:+.2f}" for t in TERMS)
                      + " |", flush=True)


if __name__ == "__main__":
    main()
