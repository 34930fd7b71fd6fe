"""Synthetic evaluation data for the eval tests: score tables and self-play without any model.

``tests/test_report.py``, ``tests/test_eval_metrics.py`` and ``tests/test_selfplay.py`` import
these helpers; the one test here checks the fixture itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

USERS = [
    ("I lost my job today and I feel terrible.", "sad"),
    ("I got the job! I'm so happy!", "happy"),
    ("My laptop crashed again, this is ridiculous!", "angry"),
    ("Can you recommend a good book about chess?", "neutral"),
    ("I'm going hiking in the mountains this weekend.", "happy"),
    ("I have exams next week and I'm panicking.", "fearful"),
]
GOOD = [
    "I'm so sorry, that sounds really hard. Losing a job hurts. How are you holding up?",
    "Wow, congratulations! That's amazing news. What will the new job be like?",
    "I understand, that's frustrating. Let's fix it step by step: does the laptop crash when you open the browser?",
    "I enjoy chess books! Try Logical Chess Move by Move. What level do you play at?",
    "Hiking in the mountains sounds wonderful! Which trail are you planning to take?",
    "That sounds stressful. Let's take it one step at a time: which exam worries you most?",
]
BAD = ["ok", "I don't know.", "Sure.", "As an AI language model, I cannot help.", "the the the the the the the", ""]


def synthetic_scores(n: int = 24, seed: int = 0, personas=None, judges=None, hack: bool = False) -> pd.DataFrame:
    """Candidate answers well (GOOD), baseline mostly poorly (BAD); reward heads are synthetic.

    ``hack=True`` makes the candidate's engagement head rise while its replies get
    generic, so the engagement judge disagrees: a reward-judge gap to flag.
    """
    rng = np.random.default_rng(seed)
    rows = []
    pids = [p.persona_id for p in personas] if personas else ["empathetic_coach", "cheerful_guide", "calm_expert"]
    for model in ("candidate", "baseline"):
        for i in range(n):
            user, emo = USERS[i % len(USERS)]
            if model == "candidate":
                resp = (BAD[i % 3] + " And you?") if hack else GOOD[i % len(GOOD)]
            else:
                resp = GOOD[i % len(GOOD)] if i % 3 == 0 else BAD[i % len(BAD)]
            base = 0.6 if model == "candidate" else 0.45
            heads = {h: float(np.clip(base + rng.normal(0, 0.05), 0, 1)) for h in ("quality", "personality", "relevance")}
            heads["engagement"] = float(np.clip((0.8 if hack and model == "candidate" else base) + rng.normal(0, 0.05), 0, 1))
            rows.append({"model": model, "prompt_id": f"p{i:04d}", "persona_id": pids[i % len(pids)],
                         "user_emotion": emo, "context": user, "response": resp, **heads,
                         "fluency": 0.5, "repetition": 0.0, "appropriateness": 0.5, "words": len(resp.split())})
    df = pd.DataFrame(rows)
    df["composite"] = 0.4 * df["quality"] + 0.25 * df["personality"] + 0.2 * df["engagement"] + 0.15 * df["relevance"]
    if judges is not None:
        by_id = {p.persona_id: p for p in personas} if personas else {}
        judged = judges.score([[{"role": "user", "content": c}] for c in df["context"]], df["response"].tolist(),
                              [by_id.get(p) for p in df["persona_id"]])
        df = pd.concat([df, judged], axis=1)
    return df


class ScriptedGenerator:
    """Stands in for ``convrl.rl.generation.Generator``: replies from a function of the conversation."""

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[list[list[dict]]] = []

    def generate(self, conversations, **kwargs):
        self.calls.append(conversations)
        return [self.reply(c) for c in conversations]


def test_synthetic_scores_have_the_evaluate_columns():
    df = synthetic_scores(6)
    assert set(df["model"]) == {"candidate", "baseline"}
    for col in ("model", "prompt_id", "composite", "quality", "personality", "engagement", "relevance", "response"):
        assert col in df
    assert df.groupby("model").size().tolist() == [6, 6]
