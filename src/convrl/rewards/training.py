"""Train the learned reward heads and measure each on held-out human data.

Each ``train_*`` builds training pairs/items from dialogues, encodes them with
the shared frozen encoder, trains the head (:mod:`convrl.rewards.learned`) and
returns ``(head, metrics)``; metrics are measured on held-out dialogues only,
next to the untrained head and a trivial baseline::

    head, m = train_relevance(enc, train_dialogues, test_dialogues)       # m["test_recall_at_1_of_10"]
    head, m = train_personality(enc, personachat_valid, personachat_test)  # m["test_auc_partner"]
    head, m = train_engagement(enc, rated_items, held_out_fraction=0.3)    # m["test_spearman_..."]

Dialogues for relevance are lists of utterances; for personality, PersonaChat
records ``{personas: [a, b], turns: [(speaker, text)]}``; for engagement,
meta-eval items (:mod:`convrl.rewards.human_data`) or turns-table items.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

from convrl.rewards.heads import engagement_signals, recent_context
from convrl.rewards.human_data import held_out
from convrl.rewards.learned import (cosine_pairs, engagement_features, recall_at_k, train_engagement_regressor,
                                    train_pair_head)

# ------------------------------------------------------------------ relevance


def relevance_pairs(dialogues: list[list[str]], context_messages: int = 4, max_pairs: int = 0,
                    seed: int = 13) -> tuple[list[str], list[str], list[str]]:
    """(context text, true next utterance, dialogue id) for every reply after the first turn."""
    ctx, resp, keys = [], [], []
    for d_i, turns in enumerate(dialogues):
        for i in range(1, len(turns)):
            window = turns[max(0, i - context_messages):i]
            # The message just before the reply is the user's; roles alternate backwards from it.
            msgs = [{"role": "user" if (len(window) - 1 - j) % 2 == 0 else "assistant", "content": t}
                    for j, t in enumerate(window)]
            ctx.append(recent_context(msgs))
            resp.append(turns[i])
            keys.append(f"{d_i}:{i}")
    return _cap3(ctx, resp, keys, max_pairs, seed)


def _cap3(a, b, c, n, seed):
    if n and len(a) > n:
        idx = sorted(random.Random(seed).sample(range(len(a)), n))
        a, b, c = [a[i] for i in idx], [b[i] for i in idx], [c[i] for i in idx]
    return a, b, c


def train_relevance(encoder, train_dialogues: list[list[str]], test_dialogues: list[list[str]],
                    max_pairs: int = 20000, max_test: int = 2000, epochs: int = 8, lr: float = 3e-4, seed: int = 13):
    c, r, k = relevance_pairs(train_dialogues, max_pairs=max_pairs, seed=seed)
    head, metrics = train_pair_head("relevance", encoder.encode(c), encoder.encode(r), k,
                                    groups=[x.split(":")[0] for x in k], epochs=epochs, lr=lr, seed=seed)
    tc, tr, _ = relevance_pairs(test_dialogues, max_pairs=max_test, seed=seed + 1)
    a, b = encoder.encode(tc), encoder.encode(tr)
    metrics.update({
        "test_pairs": float(len(tc)),
        "test_recall_at_1_of_10": recall_at_k(head.pair_scores, a, b, 10, seed),
        "test_recall_at_1_of_10_untrained_cosine": recall_at_k(cosine_pairs, a, b, 10, seed),
        "test_recall_at_1_of_10_chance": 0.1,
    })
    head.metrics = metrics
    return head, metrics


# ------------------------------------------------------------------ personality

def persona_card_text(sentences: list[str]) -> str:
    # The same text RewardScorer builds for a facts-only persona card (heads.persona_text).
    return " ".join(" ".join(str(s).split()) for s in sentences if str(s).strip())


def personality_pairs(dialogues: list[dict], min_words: int = 3):
    """(persona text, turn, persona key, dialogue index, speaker) for every turn of every speaker."""
    rows = []
    for d_i, d in enumerate(dialogues):
        # ``cards`` (texts) overrides ``personas`` (sentences) for YAML-style cards from the turn table.
        cards = d.get("cards") or [persona_card_text(p) for p in d["personas"]]
        for spk, text in d["turns"]:
            if len(text.split()) >= min_words and cards[spk]:
                rows.append((cards[spk], text, cards[spk], d_i, spk))
    return rows


def train_personality(encoder, train_dialogues: list[dict], test_dialogues: list[dict], max_pairs: int = 20000,
                      epochs: int = 8, lr: float = 3e-4, seed: int = 13):
    """Contrastive on a speaker's own turns vs other personas' turns; AUC on held-out dialogues.

    ``test_auc_partner``: own turn vs the partner's turn in the same dialogue
    (same topic, other persona: the hard case). ``test_auc_random``: own turn vs
    a turn from another held-out dialogue.
    """
    rows = personality_pairs(train_dialogues)
    if max_pairs and len(rows) > max_pairs:
        rows = random.Random(seed).sample(rows, max_pairs)
    p_emb, t_emb = encoder.encode([x[0] for x in rows]), encoder.encode([x[1] for x in rows])
    head, metrics = train_pair_head("personality", p_emb, t_emb, [x[2] for x in rows],
                                    groups=[str(x[3]) for x in rows], epochs=epochs, lr=lr, seed=seed)
    test = personality_pairs(test_dialogues)
    # Partner turns need no card of their own (a user in an ingested chat has none).
    partner_of = {(d_i, spk): [t for s_, t in d["turns"] if s_ != spk and len(t.split()) >= 3]
                  for d_i, d in enumerate(test_dialogues) for spk in (0, 1)}
    texts = [x[1] for x in test]
    rng = random.Random(seed)
    pos, partner, rand = [], [], []
    several_dialogues = len({x[3] for x in test}) >= 2
    for i, (card, _, _, d_i, spk) in enumerate(test):
        others = partner_of[(d_i, spk)]
        if not others or not several_dialogues:
            continue
        pos.append((card, i))
        texts.append(rng.choice(others))
        partner.append((card, len(texts) - 1))
        j = rng.randrange(len(test))
        while test[j][3] == d_i:
            j = rng.randrange(len(test))
        rand.append((card, j))
    if not pos:
        raise ValueError("personality head: the held-out dialogues have no turns with a persona card and a partner")
    cards = encoder.encode([c for c, _ in pos])
    turns = encoder.encode(texts)

    def auc(fn, negs):
        s_pos = fn(cards, turns[[i for _, i in pos]])
        s_neg = fn(cards, turns[[i for _, i in negs]])
        return float(roc_auc_score(np.r_[np.ones(len(s_pos)), np.zeros(len(s_neg))], np.r_[s_pos, s_neg]))

    metrics.update({"test_pairs": float(len(pos)), "test_dialogues": float(len(test_dialogues)),
                    "test_auc_partner": auc(head.pair_scores, partner),
                    "test_auc_partner_untrained_cosine": auc(cosine_pairs, partner),
                    "test_auc_random": auc(head.pair_scores, rand),
                    "test_auc_random_untrained_cosine": auc(cosine_pairs, rand), "test_auc_chance": 0.5})
    head.metrics = metrics
    return head, metrics


# ------------------------------------------------------------------ engagement

def standardised_targets(items: list[dict], rating_keys: dict[str, str]) -> tuple[list[dict], np.ndarray]:
    """Items that carry their source's rating, with targets z-scored per source (scales differ by source).

    ``rating_keys`` maps a group prefix (``convai2``, ``satisfaction-MWOZ``...) to the rating used.
    """
    kept, raw, src = [], [], []
    for it in items:
        for prefix, key in rating_keys.items():
            if it.get("group", "").startswith(prefix) and key in it["ratings"]:
                kept.append(it)
                raw.append(it["ratings"][key])
                src.append(prefix)
                break
    raw, src = np.asarray(raw, np.float64), np.asarray(src)
    z = np.zeros_like(raw)
    for s in np.unique(src):
        m = src == s
        z[m] = (raw[m] - raw[m].mean()) / (raw[m].std() + 1e-6)
    return kept, z


def _features(encoder, items: list[dict]) -> np.ndarray:
    c = encoder.encode([recent_context(it["context"]) for it in items])
    r = encoder.encode([it["response"] for it in items])
    return engagement_features(c, r, [it["response"] for it in items])


def train_engagement(encoder, items: list[dict], rating_keys: dict[str, str], held_out_fraction: float = 0.3,
                     seed: int = 13):
    """Ridge on context/reply features -> per-source standardised rating; Spearman on held-out dialogues.

    Reports, per source and rating: response-level Spearman, and for ratings
    constant within a dialogue the dialogue-level Spearman (mean prediction per
    dialogue), each beside the untrained engagement head and reply length.
    """
    kept, z = standardised_targets(items, rating_keys)
    test_mask = np.array([held_out(it["group"], held_out_fraction, seed) for it in kept])
    if test_mask.all() or not test_mask.any():
        raise ValueError("engagement head: the held-out split left no training or no test dialogues")
    train_items = [it for it, t in zip(kept, test_mask) if not t]
    test_items = [it for it, t in zip(kept, test_mask) if t]
    head, metrics = train_engagement_regressor(_features(encoder, train_items), z[~test_mask])
    pred = head.predict_raw(_features(encoder, test_items))
    untrained = engagement_signals([it["response"] for it in test_items])
    length = np.array([len(it["response"].split()) for it in test_items], dtype=float)
    metrics["test_items"] = float(len(test_items))
    for prefix, key in rating_keys.items():
        idx = [i for i, it in enumerate(test_items) if it["group"].startswith(prefix)]
        if len(idx) < 10:
            continue
        y = np.array([test_items[i]["ratings"][key] for i in idx])
        tag = f"{prefix.rstrip('-:')}/{key}"
        for name, s in (("learned", pred), ("untrained", untrained), ("length", length)):
            metrics[f"test_spearman_{tag}_{name}"] = float(stats.spearmanr(s[idx], y).statistic)
        df = pd.DataFrame({"g": [test_items[i]["group"] for i in idx], "y": y, "learned": pred[idx],
                           "untrained": untrained[idx], "length": length[idx]})
        if (df.groupby("g")["y"].nunique() == 1).all() and df["g"].nunique() < len(df):
            agg = df.groupby("g").mean()
            metrics[f"test_dialogues_{tag}"] = float(len(agg))
            for name in ("learned", "untrained", "length"):
                metrics[f"test_dialogue_spearman_{tag}_{name}"] = float(stats.spearmanr(agg[name], agg["y"]).statistic)
    head.metrics = metrics
    return head, metrics


TURNS_RATING_KEYS = {"rated:": "rating", "implicit:": "implicit"}


def turns_engagement_items(turns: pd.DataFrame, split: str | None = None, context_messages: int = 6) -> tuple[list[dict], dict]:
    """Engagement items from the canonical turn table: the human rating where a source gave one
    (``feedback_rating``), else implicit signals of the next user turn (did the user reply, how much).

    Train with ``rating_keys=TURNS_RATING_KEYS``.
    """
    items = []
    sub = turns if split is None else turns[turns["split"] == split]
    sub = sub[sub["role"] != "system"].sort_values(["conversation_id", "turn_index"])
    for cid, g in sub.groupby("conversation_id", sort=False):
        roles, texts = g["role"].tolist(), g["text"].tolist()
        ratings = g["feedback_rating"].tolist() if "feedback_rating" in g else [None] * len(g)
        # A conversation is either human-rated (ConvAI2, satisfaction sources) or not; its group says which.
        rated = any(x is not None and x == x for x in ratings)
        group = f"{'rated' if rated else 'implicit'}:{cid}"
        for i, role in enumerate(roles):
            if role != "assistant" or i == 0:
                continue
            ctx = [{"role": roles[j], "content": texts[j]} for j in range(max(0, i - context_messages), i)]
            rating = ratings[i]
            if rating is not None and rating == rating:
                r = {"rating": float(rating)}
            else:
                nxt = texts[i + 1] if i + 1 < len(roles) and roles[i + 1] == "user" else ""
                # Implicit engagement: the user came back, and wrote more than a word or two.
                r = {"implicit": 0.5 * float(bool(nxt)) + 0.5 * min(1.0, np.log1p(len(nxt.split())) / np.log(31))}
            items.append({"context": ctx, "response": texts[i], "persona": [], "ratings": r, "group": group})
    kinds = {"rated": sum("rating" in it["ratings"] for it in items)}
    kinds["implicit"] = len(items) - kinds["rated"]
    return items, kinds


# ------------------------------------------------------------------ what the reward stage trains

def _turn_dialogues(turns: pd.DataFrame, split: str) -> list[pd.DataFrame]:
    sub = turns[(turns["split"] == split) & (turns["role"] != "system")]
    return [g for _, g in sub.sort_values(["conversation_id", "turn_index"]).groupby("conversation_id", sort=True)]


def _persona_dialogues(turns: pd.DataFrame, split: str, personas: dict) -> list[dict]:
    """Ingested conversations whose assistant has a persona card: speaker 0 = assistant, 1 = user."""
    from convrl.rewards.heads import persona_text

    out = []
    for g in _turn_dialogues(turns, split):
        pid = g["persona_id"].dropna().iloc[0] if "persona_id" in g and g["persona_id"].notna().any() else None
        if pid not in personas:
            continue
        out.append({"personas": [personas[pid].facts, []], "cards": [persona_text(personas[pid]), ""],
                    "turns": [(0 if r == "assistant" else 1, t) for r, t in zip(g["role"], g["text"])]})
    return out


def _engagement_items_from(paths: list[str], cap: int, seed: int) -> tuple[list[dict], dict[str, str]]:
    from convrl.rewards.human_data import convai2_items, read_jsonl, satisfaction_items

    items, keys = [], {}
    for p in paths:
        path = Path(p)
        if path.is_file() and path.suffix == ".jsonl":
            got = read_jsonl(path, limit=cap)
            name = sorted(got[0]["ratings"])[0]
            for it in got:
                it["group"] = f"jsonl:{path.stem}:{it['group']}"
            items += got
            keys[f"jsonl:{path.stem}:"] = name
        elif (path.is_dir() and any(path.glob("*.json"))) or path.suffix == ".json":
            items += convai2_items(path, max_items=cap, per_dialogue=4, seed=seed)[0]
            keys["convai2"] = "dialogue_score"
        elif (path.is_dir() and any(path.glob("*.txt"))) or path.suffix == ".txt":
            got = satisfaction_items(path, max_items=cap, per_dialogue=4, seed=seed)[0]
            items += got
            keys.update({g.rsplit("-", 1)[0] + "-": "satisfaction" for g in {it["group"] for it in got}})
        else:
            raise ValueError(f"rewards.engagement_data: {p} is not a ConvAI2 folder, a user-satisfaction folder "
                             "or a meta-eval .jsonl")
    return items, keys


def train_configured_heads(rc, encoder, turns: pd.DataFrame, personas: dict | None = None,
                           seed: int = 13) -> tuple[dict, dict[str, float]]:
    """The learned heads ``rewards.learned_heads`` asks for, trained on the configured data; metrics on held-out data.

    ``rc`` is the ``RewardsConfig``; ``personas`` maps persona ids to cards (for
    a personality head trained on the ingested conversations).
    """
    from convrl.rewards.corpora import dailydialog_dialogues, personachat_dialogues

    heads, metrics = {}, {}
    unknown = set(rc.learned_heads) - {"relevance", "personality", "engagement", "quality"}
    if unknown:
        raise ValueError(f"rewards.learned_heads: unknown {sorted(unknown)}; choose from relevance, personality, "
                         "engagement, quality")
    cap = rc.learned_max_pairs
    if "relevance" in rc.learned_heads:
        if rc.relevance_data:
            train = [d["turns"] for d in dailydialog_dialogues(rc.relevance_data, "train")]
            test = [d["turns"] for d in dailydialog_dialogues(rc.relevance_data, "test")]
        else:
            train = [g["text"].tolist() for g in _turn_dialogues(turns, "train")]
            test = [g["text"].tolist() for g in _turn_dialogues(turns, "validation")]
        heads["relevance"], m = train_relevance(encoder, train, test, max_pairs=cap, max_test=1000,
                                                epochs=rc.learned_epochs, seed=seed)
        metrics.update({f"relevance/{k}": v for k, v in m.items()})
    if "personality" in rc.learned_heads:
        if rc.personality_data:
            train = personachat_dialogues(rc.personality_data, "valid")
            test = personachat_dialogues(rc.personality_data, "test")[:300]
        else:
            train = _persona_dialogues(turns, "train", personas or {})
            test = _persona_dialogues(turns, "validation", personas or {})
        if not train or not test:
            raise ValueError("learned personality head: no conversations with a persona card in the train and "
                             "validation splits; set rewards.personality_data to a PersonaChat folder")
        heads["personality"], m = train_personality(encoder, train, test, max_pairs=cap, epochs=rc.learned_epochs,
                                                    seed=seed)
        metrics.update({f"personality/{k}": v for k, v in m.items()})
    if "engagement" in rc.learned_heads:
        if rc.engagement_data:
            items, keys = _engagement_items_from(rc.engagement_data, cap, seed)
        else:
            items, _ = turns_engagement_items(turns)
            if cap and len(items) > cap:
                items = random.Random(seed).sample(items, cap)
            keys = TURNS_RATING_KEYS
        heads["engagement"], m = train_engagement(encoder, items, keys, seed=seed)
        metrics.update({f"engagement/{k}": v for k, v in m.items()})
    if "quality" in rc.learned_heads:
        from convrl.rewards.quality_head import quality_items, train_quality_head

        convai2 = next((p for p in rc.engagement_data if Path(p).is_dir() and any(Path(p).glob("*.json"))), "")
        items = quality_items(toxichat=rc.quality_data, convai2=convai2, dailydialog=rc.relevance_data,
                              max_dialogues=max(100, cap // 3), seed=seed)
        heads["quality"], m = train_quality_head(encoder, items, seed=seed)
        metrics.update({f"quality/{k}": v for k, v in m.items()})
    return heads, metrics
