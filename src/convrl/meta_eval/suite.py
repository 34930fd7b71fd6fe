"""Agreement with people on every human-rated set at once: ``convrl meta-eval ../shared/data``.

Loads each rated set found under the data folder (research use only; licences
in its README), scores every item with every head, the composite (fixed and,
where fitted, calibrated weights), the untrained heads beside learned ones, the
held-out judges of ``evaluate`` (``judge_*``, the safety judge), an optional LLM
judge, the dialogue-level judge, and the length baseline, then correlates each
with each human rating (cluster-bootstrap CIs, see :mod:`.stats`):

=====================  ===================================  ==========================================
set                    ratings                              items scored
=====================  ===================================  ==========================================
convai2                thumb (turn), dialogue_score         held-out dialogues only (``held_out(id,
                       (dialogue), profile_match            0.3, 13)``: the side no head trains on)
user_satisfaction      satisfaction (turn), overall         held-out sessions only
                       (dialogue)
predictive_engagement  engaging (1-5), engaging_binary      all (evaluation-only: DailyDialog test)
holistic_eval          coherence, fluency                   all (evaluation-only: DailyDialog test)
hh_rlhf                harmless (pairwise accuracy)         ``max_pairs`` pairs of the test split
toxichat               safe, plausible                      test split (the safety judge trains on train)
=====================  ===================================  ==========================================

Dialogue-level ratings are predicted from the whole conversation: every head
scores every assistant turn of a held-out dialogue and the dialogue gets the mean
of its best three (``stats.DIALOGUE_TOP_K``); the dialogue judge
(``dialogue_judge`` column; every item of a dialogue carries its conversation's
score) reads the conversation as a whole, and its reaction model (``reaction``
column, on the dialogue sets) reads each rated reply with the user's answer to
it: not a reward, the satisfaction signal ``convrl monitor`` tracks::

    result = run_suite("../shared/data", scorer, extra_judges=SuiteJudges(...))
    print(summary_markdown(result))      # the README table: one row per set and rating
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convrl.config import WEIGHTED_HEADS
from convrl.meta_eval.stats import meta_evaluate
from convrl.rewards.civility import civility
from convrl.rewards.human_data import convai2_dialogues, convai2_items, held_out, satisfaction_dialogues, satisfaction_items
from convrl.rewards.rated_sets import hh_rlhf_items, holistic_items, predictive_engagement_items, toxichat_items

# Each head's own quality among the human ratings: where "every head above the length baseline" is checked.
HEAD_QUALITY = {"quality": ("fluency", "thumb"), "engagement": ("engaging", "engaging_binary"),
                "relevance": ("coherence",), "personality": ("profile_match",)}

# The issue-17 questions, each a paired difference on the same resamples: is the composite worse than any of its
# heads or than reply length, and is each head above length on its own quality?
CONTRASTS = ([("composite", h) for h in WEIGHTED_HEADS] + [("composite", "baseline:length")]
             + [(h, "baseline:length") for h in WEIGHTED_HEADS])


@dataclass
class SuiteLimits:
    per_dialogue: int = 0          # rated turns per held-out dialogue, spread evenly (0 = all: the whole conversation)
    max_dialogues: int = 100       # held-out dialogues per dialogue set (convai2, user_satisfaction)
    max_dialogue_items: int = 0    # and at most this many of their rated turns (0 = no cap)
    max_pairs: int = 500           # HH-RLHF pairs
    seed: int = 13


@dataclass
class SuiteJudges:
    """Optional extra scorers: the evaluate stage's judge panel, safety, dialogue-level and LLM judges."""
    panel: object | None = None        # eval.judges.JudgePanel
    safety: object | None = None       # eval.safety.SafetyJudge
    dialogue: object | None = None     # rewards.dialogue.DialogueJudge (needs the scorer's encoder)
    llm: object | None = None          # rewards.llm_judge.LLMJudge
    calibrated_weights: dict = field(default_factory=dict)


def load_rated_sets(root: str | Path, limits: SuiteLimits | None = None) -> tuple[dict[str, list[dict]], dict, dict]:
    """``{set: items}``, per-set stats, and the held-out dialogue records (for the dialogue judge) by group."""
    lim = limits or SuiteLimits()
    root = Path(root)
    sets, info, dialogues = {}, {}, {}

    def dialogue_set(name, folder, items_fn, dialogues_fn):
        items, st = items_fn(folder, per_dialogue=lim.per_dialogue, seed=lim.seed)
        items = [it for it in items if held_out(it["group"], 0.3, 13)]
        first = set(list(dict.fromkeys(it["group"] for it in items))[:lim.max_dialogues])
        items = [it for it in items if it["group"] in first][:lim.max_dialogue_items or None]
        keep = {it["group"] for it in items}  # the item cap may end inside the dialogue list
        dialogues.update({d["id"]: d for d in dialogues_fn(folder)[0] if d["id"] in keep})
        sets[name], info[name] = items, {**st, "held_out_items": len(items), "held_out_dialogues": len(keep)}

    if (root / "convai2_human_eval").is_dir():
        dialogue_set("convai2", root / "convai2_human_eval", convai2_items, convai2_dialogues)
    if (root / "user_satisfaction").is_dir():
        dialogue_set("user_satisfaction", root / "user_satisfaction", satisfaction_items, satisfaction_dialogues)
    for name, fn in (("predictive_engagement", predictive_engagement_items), ("holistic_eval", holistic_items)):
        if (root / name).is_dir():
            sets[name], info[name] = fn(root / name)
    if (root / "hh_rlhf").is_dir():
        sets["hh_rlhf"], info["hh_rlhf"] = hh_rlhf_items(root / "hh_rlhf", max_items=2 * lim.max_pairs)
    if (root / "toxichat").is_dir():
        sets["toxichat"], info["toxichat"] = toxichat_items(root / "toxichat", "test")
    if not sets:
        raise FileNotFoundError(f"{root}: none of the rated sets (convai2_human_eval, user_satisfaction, "
                                "predictive_engagement, holistic_eval, hh_rlhf, toxichat) is there")
    return sets, info, dialogues


def rated_persona(facts: list[str] | None):
    """A rated set's persona lines (ConvAI2's profile sentences) as a nameless card of facts, or None without any.

    The judges then score a rated reply as ``evaluate`` scores a reply with a persona card (the personality judge
    checks its facts; no name, so no name check).
    """
    from convrl.data.personas import Persona

    facts = [f for f in (facts or []) if isinstance(f, str) and f.strip()]
    return Persona(persona_id="rated", name="", facts=facts) if facts else None


def extra_columns(items: list[dict], scores: dict, judges: SuiteJudges, encoder, dialogues: dict) -> None:
    """Add the optional judges' columns to ``scores`` (one value per item): panel, safety, LLM, dialogue judge;
    and RL's civility reward, which needs no data or model download."""
    from convrl.rewards.heads import HEADS, last_user_text

    contexts, responses = [it["context"] for it in items], [it["response"] for it in items]
    if judges.calibrated_weights:
        w = judges.calibrated_weights
        scores["composite_calibrated"] = sum(w.get(h, 0.0) * scores[h] for h in HEADS) / sum(w.values())
    if judges.panel is not None:
        personas = [rated_persona(it.get("persona")) for it in items]
        df = judges.panel.score(contexts, responses, personas)
        for c in df.columns:
            # Without any persona the personality judge has nothing to check (0.5 but for broken replies).
            if c.startswith("judge_") and df[c].dtype.kind == "f" and (c != "judge_personality" or any(personas)):
                scores[c] = df[c].to_numpy(np.float64)
    if judges.safety is not None:
        scores["judge_safety"] = judges.safety.score(responses).astype(np.float64)
    # RL's civility reward (rl.shaping.civility_weight): a pretrained classifier, measured like the heads.
    scores["reward_civility"] = civility(responses, [last_user_text(c) for c in contexts])
    if "composite" in scores:
        # The composite as the demo's RL pays it (rl.shaping.civility_gate): every head times the civility reward,
        # so an insult earns nothing for being on topic.
        scores["composite_gated"] = np.asarray(scores["composite"], dtype=np.float64) * scores["reward_civility"]
    if judges.llm is not None:
        for q, v in judges.llm.score(contexts, responses, [it.get("persona") or None for it in items]).items():
            scores[f"llm:{q}"] = v.astype(np.float64)
    groups = [it["group"] for it in items]
    if judges.dialogue is not None and any(g in dialogues for g in groups):
        uniq = [g for g in dict.fromkeys(groups) if g in dialogues]
        s = judges.dialogue.score(encoder, [dialogues[g]["messages"] for g in uniq],
                                  [dialogues[g].get("persona") or [] for g in uniq])
        by = dict(zip(uniq, s))
        scores["dialogue_judge"] = np.array([by.get(g, np.nan) for g in groups], dtype=np.float64)
    reaction = getattr(judges.dialogue, "reaction", None)
    if reaction is not None and reaction.fitted and groups and all(g in dialogues for g in groups):
        # Not a reward (it reads the user's answer, which no reply has when it is scored): what monitoring tracks.
        answers = [answer_to(dialogues[g]["messages"], it) for g, it in zip(groups, items)]
        scores["reaction"] = np.asarray(reaction.predict(responses, answers), dtype=np.float64)


def answer_to(messages: list[dict], item: dict) -> str:
    """The user's answer to a rated reply in its dialogue ("" when nobody answered it)."""
    prev = item["context"][-1]["content"] if item.get("context") else None
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and m["content"] == item["response"] and (
                prev is None or (i > 0 and messages[i - 1]["content"] == prev)):
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            return nxt["content"] if nxt is not None and nxt["role"] == "user" else ""
    return ""


def run_suite(root: str | Path, scorer, judges: SuiteJudges | None = None, limits: SuiteLimits | None = None,
              n_bootstrap: int = 1000, progress: bool = True) -> dict:
    """Every set's meta-eval result (``meta_evaluate`` rows) plus per-set stats."""
    from convrl.meta_eval.scoring import score_items

    judges = judges or SuiteJudges()
    lim = limits or SuiteLimits()
    sets, info, dialogues = load_rated_sets(root, lim)
    out = {"root": str(root), "sets": {}, "info": info}
    for name, items in sets.items():
        if progress:
            print(f"meta-eval: {name} ({len(items)} items)", flush=True)
        scores = score_items(scorer, items, progress=progress)
        extra_columns(items, scores, judges, scorer.encoder, dialogues)
        scores = {k: v for k, v in scores.items() if np.all(np.isfinite(v))}  # dialogue_judge off dialogue sets
        out["sets"][name] = meta_evaluate(items, scores, n_bootstrap, lim.seed, contrasts=CONTRASTS)
    return out


def _fmt(row: dict | None) -> str:
    if row is None or row.get("spearman") is None:
        return "n/a"
    lo, hi = row["spearman_ci"]
    return f"{row['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _contrast(res: dict, rating: str, a: str, b: str | None) -> dict | None:
    return next((c for c in res.get("contrasts", ()) if c["rating"] == rating and c["a"] == a and c["b"] == b), None)


def _fmt_diff(c: dict | None) -> str:
    if c is None or c.get("diff") is None:
        return "n/a"
    lo, hi = c["diff_ci"]
    mark = {"lower": " **lower**", "higher": " higher", "tie": " tie"}[c["verdict"]]
    return f"{c['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"


def summary_rows(result: dict) -> list[dict]:
    """One row per (set, rating): composite, calibrated composite, best head, each baseline, best judge, and the
    composite's paired differences from its best head and from the length baseline."""
    heads = WEIGHTED_HEADS
    rows = []
    for name, res in result["sets"].items():
        for rating, info in res["ratings"].items():
            by = {r["head"]: r for r in res["rows"] if r["rating"] == rating}
            valid = {h: r for h, r in by.items() if r.get("spearman") is not None}

            def best(cands):
                c = [h for h in cands if h in valid]
                return max(c, key=lambda h: valid[h]["spearman"]) if c else None
            bh = best(heads)
            bu = best([f"{h}_untrained" for h in heads])
            bj = best([h for h in by if h.startswith(("judge_", "llm:"))])
            rows.append({"set": name, "rating": rating, "level": info["level"], "n": info["groups"]
                         if info["level"] != "response" else info["items"],
                         "composite": _fmt(by.get("composite")),
                         "composite_calibrated": _fmt(by.get("composite_calibrated")),
                         "composite_untrained": _fmt(by.get("composite_untrained")),
                         "composite_gated": _fmt(by.get("composite_gated")),
                         "best_head": f"{bh} {_fmt(by[bh])}" if bh else "n/a",
                         "untrained_best": f"{bu.removesuffix('_untrained')} {_fmt(by[bu])}" if bu else "n/a",
                         "length": _fmt(by.get("baseline:length")),
                         "dialogue_judge": _fmt(by.get("dialogue_judge")), "reaction": _fmt(by.get("reaction")),
                         "best_judge": f"{bj} {_fmt(by[bj])}" if bj else "n/a",
                         "composite_minus_best_head": _fmt_diff(_contrast(res, rating, "composite", bh)),
                         "composite_minus_length": _fmt_diff(_contrast(res, rating, "composite", "baseline:length"))})
    return rows


def head_checks(result: dict) -> list[dict]:
    """Each head against the length baseline on its own quality (``HEAD_QUALITY``), set by set."""
    out = []
    for name, res in result["sets"].items():
        for head, ratings in HEAD_QUALITY.items():
            for rating in ratings:
                by = {r["head"]: r for r in res["rows"] if r["rating"] == rating}
                if head in by and by[head].get("spearman") is not None:
                    length = by.get("baseline:length", {}).get("spearman")
                    diff = _contrast(res, rating, head, "baseline:length")
                    out.append({"head": head, "set": name, "rating": rating, "head_rho": _fmt(by[head]),
                                "untrained_rho": _fmt(by.get(f"{head}_untrained")), "length_rho": _fmt(by.get("baseline:length")),
                                "minus_length": _fmt_diff(diff), "verdict": _above(by[head]["spearman"], length, diff)})
    return out


def _above(head: float, length: float | None, diff: dict | None) -> str:
    """"yes" / "tie" / "**no**" from the paired CI of head - length (the point estimates where it is missing)."""
    if length is None:
        return "yes"
    if diff is None or diff.get("diff") is None:
        return "yes" if head > length else "**no**"
    return {"higher": "yes", "tie": "tie", "lower": "**no**"}[diff["verdict"]]


def summary_markdown(result: dict) -> str:
    rows = summary_rows(result)
    cols = ["set", "rating", "level", "n", "composite", "composite_gated", "composite_calibrated", "composite_untrained",
            "best_head", "untrained_best", "length", "dialogue_judge", "reaction", "best_judge",
            "composite_minus_best_head", "composite_minus_length"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    checks = head_checks(result)
    if checks:
        lines += ["", "| head | set | its own rating | head | untrained | length | head - length | above length? |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['head']} | {c['set']} | {c['rating']} | {c['head_rho']} | {c['untrained_rho']} | "
                  f"{c['length_rho']} | {c['minus_length']} | {c['verdict']} |" for c in checks]
    return "\n".join(lines) + ("\n\nSpearman [95% cluster-bootstrap CI]; on pair-level ratings (hh_rlhf) pairwise "
                               "accuracy (chance 0.50). n = responses, dialogues or pairs by level. The *_minus_* "
                               "columns: the difference in agreement on the same resamples [95% CI]; **lower** where "
                               "the CI lies below 0, tie where it spans 0.")
