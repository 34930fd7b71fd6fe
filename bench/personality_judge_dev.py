"""Does the personality judge agree with people, and does it merely count words? ConvAI2, training side by default.

``evaluate``'s personality judge (``convrl.eval.judge_scorers.personality_judge``) scores a reply by the persona
facts and trait markers it shows. This compares it with plain variants on ConvAI2's human ratings (profile match,
dialogue score), each dialogue scored by the mean of its three best bot turns (the meta-eval's rule), and prints
how much each follows reply length over the same replies. Variants: ``hits`` (persona keywords in the reply),
``fact_coverage`` (share of persona facts touched), ``best_fact_overlap`` (the most complete single fact),
``density`` (share of the reply's words that are persona keywords: length-normalised). ``--side train`` (default)
reads only dialogues outside ``held_out(id, 0.3, 13)``, the side a choice may be made on::

    .venv/bin/python bench/personality_judge_dev.py                  # training side, a few seconds
    .venv/bin/python bench/personality_judge_dev.py --side held-out  # the meta-eval's held-out dialogues
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def variants(responses: list[str], personas: list) -> dict[str, np.ndarray]:
    """The judge and its plain variants, one value per reply."""
    from convrl.eval.judge_scorers import fact_keywords, personality_judge, tokens

    words = [set(tokens(r)) for r in responses]
    facts = [[fact_keywords(f) for f in p.facts] if p else [] for p in personas]
    keys = [set().union(*f) if f else set() for f in facts]
    return {
        "judge": personality_judge(responses, personas)[0].astype(float),
        "hits": np.array([len(w & k) for w, k in zip(words, keys)], float),
        "fact_coverage": np.array([np.mean([bool(w & k) for k in f]) if f else 0.0 for w, f in zip(words, facts)]),
        "best_fact_overlap": np.array([max(len(w & k) / max(1, len(k)) for k in f) if f else 0.0
                                       for w, f in zip(words, facts)]),
        "density": np.array([len(w & k) / max(1, len(w)) for w, k in zip(words, keys)]),
        "length": np.array([len(tokens(r)) for r in responses], float),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--side", choices=("train", "held-out"), default="train")
    a = p.parse_args(argv)
    folder = Path(a.data) / "convai2_human_eval"
    if not folder.is_dir():
        print(f"no ConvAI2 human evaluation under {a.data}")
        return 2
    from scipy.stats import spearmanr

    from convrl.meta_eval.stats import DIALOGUE_TOP_K, dialogue_scores
    from convrl.meta_eval.suite import rated_persona
    from convrl.rewards.human_data import convai2_items, held_out

    items = [it for it in convai2_items(folder, per_dialogue=0)[0]
             if held_out(it["group"], 0.3, 13) == (a.side == "held-out")]
    cols = variants([it["response"] for it in items], [rated_persona(it.get("persona")) for it in items])
    print(f"{len(items)} bot turns ({a.side} side)")
    print("| rating | dialogues | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for rating in ("profile_match", "dialogue_score"):
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            if rating in it["ratings"]:
                groups.setdefault(it["group"], []).append(i)
        units = list(groups.values())
        y = np.array([items[u[0]]["ratings"][rating] for u in units])
        flat, inv = np.concatenate(units), np.repeat(np.arange(len(units)), [len(u) for u in units])
        rho = [spearmanr(dialogue_scores(v[flat], inv, DIALOGUE_TOP_K), y).statistic for v in cols.values()]
        print(f"| {rating} | {len(units)} | " + " | ".join(f"{r:+.2f}" for r in rho) + " |")
    length = cols["length"]
    print("| Spearman with reply length (per reply) | | " + " | ".join(
        f"{spearmanr(v, length).statistic:+.2f}" for v in cols.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
