"""Choose the dialogue-level judge's features and training size on the training side only.

The dialogue judge (``convrl.rewards.dialogue``) is a regressor from
whole-conversation features to a dialogue's human rating. This script never
touches the dialogues ``convrl meta-eval`` holds out (``held_out(id, 0.3, 13)``):
it splits the *training side* again (``held_out(id, 0.25, 14)`` = dev), fits
on the rest and prints the dev Spearman per source for each feature set and
training size, with 95% bootstrap CIs::

    .venv/bin/python bench/dialogue_judge_dev.py                      # ../shared/data, every rated dialogue
    .venv/bin/python bench/dialogue_judge_dev.py --max-per-source 300 --threads 2

Feature sets: ``base`` = the judge's first 21 features (an earlier round's),
``conversation`` = the 25 of ``CONVERSATION_FEATURES`` (the previous round's),
``+cues`` = with the lexical cues of ``convrl.rewards.reactions``, ``+reaction`` =
with the turn-level reaction model (fitted on the training rows, out-of-fold
on them), ``all`` = every feature in ``FEATURES``. Sizes: ``cap`` = at most
``--cap`` training dialogues per source (what ``rewards.dialogue_max_per_source
=150`` gave after the held-out split: 105), ``full`` = every training-side one.
Models: ``ridge`` (the previous round's) and ``gbm`` (gradient-boosted trees,
the default since this comparison).

``--reaction encoder`` compares the two reaction models instead (TF-IDF ridge and
the fine-tuned encoder of ``convrl.rewards.reaction_encoder``, 2 folds as the
reward stage fits it): their Spearman with the raters' turn ratings on the dev
sessions, and the judge (trees, every training-side dialogue, all features)
with each::

    .venv/bin/python bench/dialogue_judge_dev.py --reaction encoder --threads 2    # 895 s on a 2-core Xeon with AMX
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BASE_FEATURES = 21


def _spearman_ci(pred, y, rng, n_boot: int = 1000) -> tuple[float, float, float]:
    import numpy as np
    from scipy import stats

    rho = float(stats.spearmanr(pred, y).statistic)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    boots = [stats.spearmanr(pred[i], y[i]).statistic for i in idx]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return rho, float(lo), float(hi)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--max-per-source", type=int, default=0, help="rated dialogues loaded per source (0 = all)")
    p.add_argument("--cap", type=int, default=105, help="training dialogues per source in the 'cap' size")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--reaction", choices=("tfidf", "encoder"), default="tfidf",
                   help="encoder: compare the TF-IDF and fine-tuned-encoder reaction models (skips the feature sets)")
    p.add_argument("--reaction-epochs", type=float, default=2.0,
                   help="epochs of the encoder reaction model (rewards.reaction_epochs; research: 2)")
    a = p.parse_args(argv)
    data = Path(a.data)
    if not (data / "convai2_human_eval").is_dir():
        print(f"no rated dialogue sets under {data}", file=sys.stderr)
        return 2
    import numpy as np
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from convrl import models
    from convrl.rewards.dialogue import CONVERSATION_FEATURES, FEATURES, dialogue_features, fit_dialogue_judge, \
        rated_dialogues, standardized_scores
    from convrl.rewards.encoder import SentenceEncoder
    from convrl.rewards.human_data import held_out
    from convrl.rewards.reactions import CUE_FEATURES, REACTION_FEATURES, crossfit_reaction

    t0 = time.time()
    every = rated_dialogues([str(data / "convai2_human_eval"), str(data / "user_satisfaction")], a.max_per_source)
    side = [d for d in every if not held_out(d["id"], 0.3, 13)]  # meta-eval's held-out dialogues never enter
    dev = np.array([held_out(d["id"], 0.25, 14) for d in side])
    src = np.array([d["source"] for d in side])
    y = np.array([d["score"] for d in side], dtype=np.float64)
    encoder = SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2"))
    x = dialogue_features(encoder, [d["messages"] for d in side], [d.get("persona") or [] for d in side])
    print(f"{len(side)} training-side dialogues ({int(dev.sum())} dev), features in {time.time() - t0:.0f} s")
    z = standardized_scores(side, dev)
    rank = np.zeros(len(side), dtype=int)  # a fixed order inside each source for the capped size
    for s in np.unique(src):
        m = np.flatnonzero((src == s) & ~dev)
        rank[m] = np.arange(len(m))
    n_conv, n_cue, n_react = len(CONVERSATION_FEATURES), len(CUE_FEATURES), len(REACTION_FEATURES)
    sets = {"base": list(range(BASE_FEATURES)), "conversation": list(range(n_conv)),
            "+cues": list(range(n_conv + n_cue)),
            "+reaction": list(range(n_conv)) + list(range(n_conv + n_cue, n_conv + n_cue + n_react)),
            "all": list(range(len(FEATURES)))}
    convs, ids = [d["messages"] for d in side], [d["id"] for d in side]
    groups = {s: src == s for s in np.unique(src)}
    groups["user_satisfaction (all corpora)"] = np.char.startswith(src.astype(str), "satisfaction")
    if a.reaction == "encoder":
        _compare_reactions(a, convs, ids, x, z, dev, groups, y)
        print(f"total {time.time() - t0:.0f} s")
        return 0
    print("| model | features | training size | train dialogues | source | dev n | dev Spearman [95% CI] |")
    print("|---|---|---|---|---|---|---|")
    trains = {size: ~dev & ((rank < a.cap) if size == "cap" else True) for size in ("cap", "full")}
    # The reaction model is fitted on each size's training rows only (out-of-fold on them).
    reactions = {size: crossfit_reaction(convs, train, ids)[0] for size, train in trains.items()}
    for kind, size, name in [(k, s, n) for k in ("ridge", "gbm") for s in ("cap", "full") for n in sets]:
        train = trains[size]
        x[:, len(FEATURES) - n_react:] = reactions[size]
        xs = np.zeros_like(x)
        xs[:, sets[name]] = x[:, sets[name]]
        pred = fit_dialogue_judge(xs, z, train, kind).predict_raw(xs)
        _dev_rows(f"| {kind} | {name} | {size} | {int(train.sum())} |", pred, groups, dev, y, a.seed)
    _ceiling(side, dev, z, reactions["full"], np.random.default_rng(a.seed))
    print(f"total {time.time() - t0:.0f} s")
    return 0


def _compare_reactions(a, convs, ids, x, z, dev, groups, y) -> None:
    """TF-IDF vs fine-tuned encoder reaction model: per turn on dev, and inside the judge (gbm, all features)."""
    import numpy as np

    from convrl import models
    from convrl.rewards.dialogue import FEATURES, fit_dialogue_judge
    from convrl.rewards.reaction_encoder import reaction_fitter
    from convrl.rewards.reactions import REACTION_FEATURES, crossfit_reaction, exchanges

    t0 = time.time()
    enc_dir = models.resolve_encoder("all-minilm-l6-v2")
    built = {}
    for kind in ("tfidf", "encoder"):
        fit, folds = reaction_fitter(kind, enc_dir, a.reaction_epochs, a.seed)  # as the reward stage fits each
        built[kind] = crossfit_reaction(convs, ~dev, ids, folds, fit)
    print(f"reaction models fitted in {time.time() - t0:.0f} s\n")
    rated = [(t, r) for i in np.flatnonzero(dev) for t, r in exchanges(convs[i]) if r is not None]
    texts, ratings = [t for t, _ in rated], np.array([r for _, r in rated])
    print("| reaction model | dev rated turns | Spearman with the turn's rating [95% CI] |")
    print("|---|---|---|")
    for name, (_, model) in built.items():
        rho, lo, hi = _spearman_ci(model.predict_texts(texts), ratings, np.random.default_rng(a.seed))
        print(f"| {name} | {len(texts)} | {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    print("\n| reaction model | judge input | source | dev n | dev Spearman [95% CI] |")
    print("|---|---|---|---|---|")
    for name, (feats, _) in built.items():
        for label, cols in (("reaction_mean alone", None), ("judge (gbm, all features)", "all")):
            xs = x.copy()
            xs[:, len(FEATURES) - len(REACTION_FEATURES):] = feats
            pred = feats[:, 0] if cols is None else fit_dialogue_judge(xs, z, ~dev, "gbm").predict_raw(xs)
            _dev_rows(f"| {name} | {label} |", pred, groups, dev, y, a.seed)


def _dev_rows(prefix: str, pred, groups, dev, y, seed: int) -> None:
    """One table row per source group with 10+ dev dialogues: ``prefix | group | n | Spearman [95% CI] |``."""
    import numpy as np

    for g, m in groups.items():
        m = m & dev
        if m.sum() < 10:
            continue
        # Pooled corpora: their raw ratings (one 1-5 scale), as meta-eval pools them.
        rho, lo, hi = _spearman_ci(pred[m], y[m], np.random.default_rng(seed))
        print(f"{prefix} {g} | {int(m.sum())} | {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] |")


def _ceiling(side, dev, z, reaction, rng) -> None:
    """How much of a session's overall rating the turns' ratings carry: the raters' own vs predicted from text."""
    import numpy as np

    human = np.array([np.mean(r) if (r := [float(m["ratings"]["satisfaction"]) for m in d["messages"]
                                         if m.get("role") == "assistant"
                                         and (m.get("ratings") or {}).get("satisfaction") is not None]) else np.nan
                      for d in side])
    m = dev & ~np.isnan(human)
    if m.sum() < 10:
        return
    print("\n| user satisfaction, dev sessions with rated turns | n | Spearman [95% CI] |")
    print("|---|---|---|")
    for label, pred, target in (
            ("overall vs the raters' own turn ratings, mean (an oracle: not known for a new session)", human, z),
            ("overall vs the reaction model's predicted turn ratings, mean (feature reaction_mean)", reaction[:, 0], z),
            ("the raters' turn-rating mean vs the predicted one", reaction[:, 0], human)):
        rho, lo, hi = _spearman_ci(pred[m], target[m], rng)
        print(f"| {label} | {int(m.sum())} | {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] |")


if __name__ == "__main__":
    raise SystemExit(main())
