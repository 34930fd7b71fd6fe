"""evaluate_models scores every model's replies in one pass; the result must equal scoring model by model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from convrl.eval.evaluate import evaluate_models, score_responses
from convrl.eval.judges import JudgePanel
from convrl.rewards.fluency import FluencyScorer
from convrl.rewards.heads import HEADS, RewardScorer
from convrl.rl.generation import Generator


def test_joint_scoring_equals_scoring_each_model(tiny_encoder, tiny_policy_dir, personas, monkeypatch):
    scorer = RewardScorer(tiny_encoder, None, FluencyScorer(tiny_policy_dir, dtype=torch.float32))
    prompts = [{"prompt": [{"role": "system", "content": personas[i % 3].system_prompt("neutral")},
                           {"role": "user", "content": text}], "persona_id": personas[i % 3].persona_id}
               for i, text in enumerate(["I lost my keys again.", "We won the match today!", "Why is the sky blue?",
                                         "My cat is ill and I am worried."])]
    by_id = {p.persona_id: p for p in personas}
    canned = {"a": ["Oh no, where did you last see them?", "Congratulations, what a game!", "Light scatters.",
                    "I am sorry, I hope your cat feels better soon."],
              "b": ["Keys.", "Nice.", "Because of Rayleigh scattering of sunlight.", "That is hard."]}
    # Fixed replies per model directory: the test is about scoring, not about what a random tiny model says.
    monkeypatch.setattr(Generator, "__init__", lambda self, d, **kw: setattr(self, "d", d))
    decoding = []
    ended = {"a": [True, True, False, True], "b": [True] * 4}  # the candidate's third reply was cut at the budget

    def generate(self, convs, **kw):
        decoding.append(kw)
        self.last_ended = ended[self.d]
        return list(canned[self.d])

    monkeypatch.setattr(Generator, "generate", generate)
    panel = JudgePanel()
    shared = []
    real_shared = scorer.fluency._score_shared
    monkeypatch.setattr(scorer.fluency, "_score_shared",
                        lambda p_ids, idx, *a: (shared.append(len(idx)), real_shared(p_ids, idx, *a)))
    common = []
    real_common = scorer.fluency._score_common
    monkeypatch.setattr(scorer.fluency, "_score_common", lambda cluster, n, groups, *a: (
        common.append(sorted(len(groups[k]) for k in cluster)), real_common(cluster, n, groups, *a)))
    joint = evaluate_models({"candidate": "a", "baseline": "b"}, prompts, scorer, by_id, 8, 2, 0, judges=panel,
                            no_repeat_ngram_size=4)
    # Both models decode the same way: greedy, no repeated 4-gram (as convrl chat).
    assert [(k["do_sample"], k["no_repeat_ngram_size"]) for k in decoding] == [(False, 4), (False, 4)]
    # The speed levers: each prompt's context runs once through the fluency LM for both models' replies, and the
    # two prompts of persona 0 run its card once (the common-prefix path), the other two alone.
    assert shared == [2, 2] and common == [[2, 2]]

    assert joint["model"].tolist() == ["candidate"] * 4 + ["baseline"] * 4
    assert joint["prompt_id"].tolist() == ["p0000", "p0001", "p0002", "p0003"] * 2
    assert joint["response"].tolist() == canned["a"] + canned["b"]
    assert joint["cut_off"].tolist() == [0.0, 0.0, 1.0, 0.0] + [0.0] * 4
    for name, d in (("candidate", "a"), ("baseline", "b")):
        alone = score_responses(scorer, prompts, canned[d], by_id)
        got = joint[joint["model"] == name].reset_index(drop=True)
        for col in [*HEADS, "composite", "fluency", "repetition", "appropriateness"]:
            # Shared-prefix and lone fluency passes add up the same numbers in a different order.
            np.testing.assert_allclose(got[col], alone[col], atol=1e-5, err_msg=col)
        pd.testing.assert_series_equal(got["user_emotion"], alone["user_emotion"])
    assert {c for c in joint.columns if c.startswith("judge_")} >= {"judge_relevance", "judge_fluency"}


def test_a_temperature_samples_every_model_the_same_way(monkeypatch, tiny_encoder, personas):
    scorer = RewardScorer(tiny_encoder, None, None)
    prompts = [{"prompt": [{"role": "user", "content": "I lost my keys again."}], "persona_id": personas[0].persona_id}]
    monkeypatch.setattr(Generator, "__init__", lambda self, d, **kw: None)
    decoding = []
    monkeypatch.setattr(Generator, "generate", lambda self, convs, **kw: (
        decoding.append(kw), setattr(self, "last_ended", [True]), ["Where were they?"])[2])
    by_id = {p.persona_id: p for p in personas}
    evaluate_models({"candidate": "a", "baseline": "b"}, prompts, scorer, by_id, 8, 2, 5, temperature=0.7)
    assert [(k["do_sample"], k["temperature"], k["seed"]) for k in decoding] == [(True, 0.7, 5), (True, 0.7, 5)]
    decoding.clear()
    evaluate_models({"candidate": "a"}, prompts, scorer, by_id, 8, 2, 5)
    assert decoding[0]["do_sample"] is False and "temperature" not in decoding[0]  # greedy: the cache keys stay
