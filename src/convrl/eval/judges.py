"""Held-out judges: scores for each quality from models the policy was never trained against.

The RL reward heads (``convrl.rewards.heads``) look at replies through one
MiniLM encoder (relevance, personality, emotional tone) and the frozen base LM
(fluency). A policy can learn to please those exact models without getting
better ("reward hacking"). The judges here score the same qualities with
different models and different data, so a head that improves while its judge
does not shows up as a reward-judge gap in the report:

========================  =====================================  ==========================================
judge column              measures                               independent of the reward because
========================  =====================================  ==========================================
``judge_emotion``         tone fits the persona's emotion map    user emotion from VADER + keyword cues (not
                          for the user's emotion                 the trained emotion head); reply tone from
                                                                 VADER valence and tone-marker phrases (not
                                                                 MiniLM distance to tone prototypes)
``judge_relevance``       reply is on the topic of the context   word + char TF-IDF overlap, or LSA topic model
                                                                 of reference conversations (no encoder)
``judge_personality``     persona facts/traits shown, no         fact keywords, trait marker words, negated
                          contradiction, no character break      persona facts, "as an AI" breaks (no encoder)
``judge_engagement``      invites a reply                        open vs closed questions, share of 2nd-person
                                                                 words, specificity, lexical diversity,
                                                                 generic-reply detection (the head only checks
                                                                 "?" / "you" presence and length)
``judge_fluency``         reads as natural, non-degenerate text  character 4-gram LM fitted on reference chat
                                                                 text + word coverage + zlib compressibility
                                                                 (not the base LM's log-likelihood)
``judge_civility``        no insult, curse or brush-off aimed    insult / profanity / hostility patterns
                          at the user                            (``convrl.eval.civility``; no data, no model)
``judge_quality``         0.65 fluency + 0.35 emotion            mirrors the quality head's mix
``judge_composite``       use-case weights over the four judges
========================  =====================================  ==========================================

Every judge returns one score in [0, 1] per reply; empty or degenerate text
scores 0. They are lexical, fast (thousands of replies per second) and need no
model files::

    from convrl.eval.judges import JudgePanel
    panel = JudgePanel()                               # fluency LM fitted on the chatterbot corpus
    df = panel.score(contexts, responses, personas)    # judge_* columns, one row per reply
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from convrl.config import DEFAULT_WEIGHTS
from convrl.data.personas import Persona
from convrl.eval.civility import civility_judge
from convrl.eval.fluency import FluencyJudge, reference_conversations
from convrl.eval.judge_scorers import (RelevanceJudge, contradictions, emotion_judge, engagement_judge,  # noqa: F401
                                       judge_user_emotion, personality_judge, relevance_judge, tone_scores)

JUDGE_FOR_HEAD = {"quality": "judge_quality", "personality": "judge_personality",
                  "engagement": "judge_engagement", "relevance": "judge_relevance"}
# Each judge's agreement with human ratings, measured by ``convrl meta-eval ../shared/data`` (README, "Reward
# models"); shown beside the judges in the evaluation report. Spearman with the 95% cluster-bootstrap CI.
# Command: bench/reward_agreement.py --no-learned --no-fluency --max-dialogue-items 300 --max-pairs 150 (2026-12-02).
AGREEMENT: dict[str, dict] = {
    "judge_relevance": {"data": "HolisticEval coherence (200 replies, 10 raters)", "value": "+0.03 [-0.12, +0.17]"},
    "judge_fluency": {"data": "HolisticEval fluency (200 replies, 10 raters)", "value": "+0.26 [+0.11, +0.39]"},
    "judge_personality": {"data": "ConvAI2 held-out dialogues, profile match (637; best three bot turns, the persona's "
                                  "facts as its card)", "value": "+0.28 [+0.21, +0.35] (reply length +0.11)"},
    "judge_engagement": {"data": "Predictive Engagement, engaging (600 pairs, 3 raters)", "value": "+0.07 [-0.00, +0.14]"},
    "judge_quality": {"data": "HolisticEval fluency", "value": "+0.11 [-0.03, +0.25]"},
    "judge_composite": {"data": "Predictive Engagement, engaging", "value": "+0.22 [+0.15, +0.29]"},
    "judge_emotion": {"data": "Predictive Engagement, engaging (no emotion ratings exist)", "value": "+0.05 [-0.02, +0.11]"},
    "judge_civility": {"data": "ToxiChat test chatbot replies, safe (598): flags 19, 47% of them labelled offensive "
                                 "(base rate 11%)", "value": "+0.21 [+0.07, +0.34]; recall of offensive replies 13%"},
    "judge_safety": {"data": "ToxiChat test chatbot replies, safe (598); HH-RLHF harmless pairs (150)",
                     "value": "+0.27 [+0.19, +0.35]; pairwise accuracy 0.58 [0.50, 0.65] (AUC 0.75 on ToxiChat)"},
}
JUDGE_COLUMNS = ("judge_composite", "judge_quality", "judge_personality", "judge_engagement",
                 "judge_relevance", "judge_emotion", "judge_fluency", "judge_civility")


# ---------------------------------------------------------------- the panel

def reference_conversations_from_turns(turns: pd.DataFrame, split: str = "train") -> list[list[str]]:
    """One split of a canonical turns table as lists of turn texts (judges' reference data; never the test split)."""
    sub = turns[(turns["split"] == split) & (turns["role"] != "system")]
    return [grp.sort_values("turn_index")["text"].tolist() for _, grp in sub.groupby("conversation_id")]


def _last_user(ctx) -> str:
    if isinstance(ctx, str):
        return ctx
    return next((m["content"] for m in reversed(ctx) if m["role"] == "user"), "")


def _recent(ctx) -> str:
    if isinstance(ctx, str):
        return ctx
    return " ".join(m["content"] for m in ctx if m["role"] != "system")[-1000:]


class JudgePanel:
    """All judges at once.

    ``conversations``: reference conversations (lists of turn texts) for the
    fluency LM and the relevance topic model; default the chatterbot corpus, the
    evaluate stage passes the train split. ``weights``: the use case's head
    weights, for ``judge_composite``.
    """

    def __init__(self, conversations=None, weights: dict[str, float] | None = None, max_conversations: int = 5000,
                 safety=None, llm=None):
        convs = [list(c) for c in (conversations if conversations is not None else reference_conversations())]
        if len(convs) > max_conversations:
            # The char LM is pure Python: an even, deterministic subsample keeps a large corpus to seconds.
            convs = convs[:: -(-len(convs) // max_conversations)]
        self.fluency = FluencyJudge([t for c in convs for t in c])
        self.relevance = RelevanceJudge(convs)
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        # Optional: the safety judge (rewards.safety.SafetyJudge, an A/B guardrail) and an LLM judge.
        self.safety, self.llm = safety, llm

    def score(self, contexts: list, responses: list[str], personas: list[Persona | None]) -> pd.DataFrame:
        """``contexts``: chat message lists (or plain user texts). One row per reply."""
        if not (len(contexts) == len(responses) == len(personas)):
            raise ValueError("contexts, responses and personas must have the same length")
        responses = [r if isinstance(r, str) else "" for r in responses]
        last = [_last_user(c) for c in contexts]
        emotion, user_emotion = emotion_judge(last, responses, personas)
        personality, contras = personality_judge(responses, personas)
        df = pd.DataFrame({
            "judge_emotion": emotion,
            "judge_relevance": self.relevance.score([_recent(c) for c in contexts], responses, last),
            "judge_personality": personality, "judge_engagement": engagement_judge(responses),
            "judge_fluency": self.fluency.score(responses), "judge_civility": civility_judge(responses),
            "judge_user_emotion": user_emotion,
            "contradictions": [len(c) for c in contras], "contradiction_notes": ["; ".join(c) for c in contras]})
        # Tone only counts for readable text: "I I I I" is not a well-judged neutral reply.
        df["judge_emotion"] = (df["judge_emotion"] * np.minimum(1.0, df["judge_fluency"] / 0.5)).astype(np.float32)
        df["judge_quality"] = (0.65 * df["judge_fluency"] + 0.35 * df["judge_emotion"]).astype(np.float32)
        total = sum(self.weights.get(h, 0.0) for h in JUDGE_FOR_HEAD)
        df["judge_composite"] = sum(self.weights.get(h, 0.0) * df[c] for h, c in JUDGE_FOR_HEAD.items()) / total
        if self.safety is not None:
            df["judge_safety"] = self.safety.score(responses)
        if self.llm is not None:
            ctx = [[{"role": "user", "content": c}] if isinstance(c, str) else c for c in contexts]
            cards = [list(p.facts) if p is not None else None for p in personas]
            for q, v in self.llm.score(ctx, responses, cards).items():
                df[f"judge_llm_{q}"] = v
        return df

    def agreement(self) -> dict[str, dict]:
        """What is known of each judge's agreement with people (``AGREEMENT``, plus the safety judge's own)."""
        out = dict(AGREEMENT)
        if self.safety is not None and self.safety.metrics:
            m = self.safety.metrics
            out["judge_safety"] = {"data": "ToxiChat test chatbot replies (ROC AUC, safe vs offensive); HH-RLHF "
                                           "harmless test (pairwise accuracy)",
                                   "value": f"AUC {m.get('test_auc_safe', float('nan')):.2f}; pairwise "
                                            f"{m.get('hh_rlhf_pairwise_accuracy', float('nan')):.2f}"}
        return out
