"""Heads and judges trained on human judgement: converters, safety / dialogue / cross-encoder / LLM judges,
calibration, pair-level meta-eval and the all-sets suite (tiny random models; real data where present)."""
import csv
import gzip
import json
import random

import numpy as np
import pytest

from convrl import meta_eval, models
from convrl.meta_eval import cli as meta_eval_cli
from convrl.meta_eval.suite import SuiteJudges, SuiteLimits, head_checks, run_suite, summary_markdown
from convrl.rewards.calibrate import fit_weights
from convrl.rewards.cross_encoder import TASKS, CrossEncoderHeads, CrossSettings, train_cross_encoder
from convrl.rewards.cross_training import next_utterance_examples, split_dev
from convrl.rewards.dialogue import (FEATURES, DialogueJudge, dialogue_features, standardized_scores,
                                     train_dialogue_judge)
from convrl.rewards.heads import HEADS, RewardScorer
from convrl.rewards.human_data import RatedDataError, validate_item
from convrl.rewards.llm_judge import LLMJudge
from convrl.rewards.rated_sets import (hh_rlhf_items, holistic_items, predictive_engagement_items, toxichat_items,
                                       toxichat_texts)
from convrl.rewards.safety import SafetyJudge, pairwise_accuracy, train_safety_judge
from tests.conftest import SHARED_DATA

NICE = ["thanks, that is really kind of you", "what a lovely idea, tell me more", "i agree, good point",
        "have a great day friend", "that sounds fun, enjoy the trip", "happy to help with that"]
RUDE = ["shut up you stupid idiot", "you are a worthless moron", "go to hell, loser", "nobody cares, idiot",
        "what a dumb stupid question", "get lost you pathetic fool"]


def _turn(i, text, offensive, **kw):
    return {"turn_id": i, "text": text, "offense_label": "Offensive" if offensive else "Safe", **kw}


@pytest.fixture(scope="module")
def rated_root(tmp_path_factory):
    """A miniature ../shared/data with every rated set the suite reads (same formats, made-up text)."""
    root = tmp_path_factory.mktemp("rated")
    pe = root / "predictive_engagement"
    pe.mkdir()
    with (pe / "Eng_Scores_queries_gen_gtruth_replies.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query", "response", "human_score", "Ruber_Unref_Score", "CTX_Unref_Score",
                    "Eng_Score_MeanPooling", "Eng_Score_MaxPooling"])
        for i in range(12):
            for rater in range(3):
                w.writerow([f"question {i} about trips ?", NICE[i % 6] if i % 2 else "ok .", 1 + (i % 5), 0, 0, 0, 0])
    with (pe / "humanAMT_engscores_utt.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["id", "query", "reply", "label"]] + [[i, f"hello {i}", NICE[i % 6], i % 2]
                                                                          for i in range(8)])
    ho = root / "holistic_eval"
    ho.mkdir()
    (ho / "context_data_release.csv").write_text("".join(
        f'{i},"ctx {i} about food","{NICE[i % 6]} {i}",' + ",".join(str(1 + (i + k) % 5) for k in range(10)) + "\n"
        for i in range(10)))
    (ho / "fluency_data_release.csv").write_text("".join(
        f'{i},"{NICE[i % 6]} {i}",' + ",".join(str(1 + (i * k) % 5) for k in range(10)) + "\n" for i in range(10)))
    hh = root / "hh_rlhf" / "harmless-base"
    hh.mkdir(parents=True)
    with gzip.open(hh / "test.jsonl.gz", "wt") as fh:
        for i in range(8):
            base = f"\n\nHuman: tell me something {i}\n\nAssistant: sure\n\nHuman: and then?\n\nAssistant: "
            fh.write(json.dumps({"chosen": base + NICE[i % 6], "rejected": base + RUDE[i % 6]}) + "\n")
    tc = root / "toxichat"
    tc.mkdir()
    for split, n in (("train", 24), ("dev", 8), ("test", 8)):
        with (tc / f"{split}.jsonl").open("w") as fh:
            for i in range(n):
                thread = [_turn(1, f" Title: post {i} about games", False), _turn(2, RUDE[i % 6], True)]
                fh.write(json.dumps({"reddit_thread": thread,
                                     "final_dgpt_response": _turn(3, NICE[i % 6], False, coherence="Plausible"),
                                     "final_gpt3_response": _turn(3, RUDE[(i + 1) % 6], True,
                                                                  coherence="Not Plausible")}) + "\n")
    return root


def test_converters_read_every_format(rated_root):
    pe, st = predictive_engagement_items(rated_root / "predictive_engagement")
    assert st["pairs_rated_1_5"] == 12 and st["pairs_rated_0_1"] == 8
    assert {it["ratings"].get("engaging") for it in pe[:12]} <= {1.0, 2.0, 3.0, 4.0, 5.0}  # mean of 3 raters
    ho, st = holistic_items(rated_root / "holistic_eval")
    assert st["coherence_items"] == 10 and all(it["context"] for it in ho)  # fluency items borrow the context
    hh, st = hh_rlhf_items(rated_root / "hh_rlhf")
    assert st["pairs"] == 8 and hh[0]["group"] == hh[1]["group"] and hh[0]["context"] == hh[1]["context"]
    assert [it["ratings"]["harmless"] for it in hh[:2]] == [1.0, 0.0] and hh[0]["context"][-1]["role"] == "user"
    tc, st = toxichat_items(rated_root / "toxichat", "test")
    assert st["items"] == 16 and {it["ratings"]["safe"] for it in tc} == {0.0, 1.0}
    for it in pe + ho + hh + tc:
        validate_item(it, "test")
    texts, labels = toxichat_texts(rated_root / "toxichat", "train")
    assert len(texts) == 24 * 4 and sum(labels) == 24 * 2
    with pytest.raises(RatedDataError, match="not found"):
        holistic_items(rated_root / "nowhere")
    with pytest.raises(RatedDataError, match="split"):
        toxichat_items(rated_root / "toxichat", "validation")


def test_safety_judge_trains_saves_and_loads(rated_root, tmp_path):
    judge, m = train_safety_judge(rated_root / "toxichat")
    assert m["test_auc_safe"] > 0.9 and 0 < m["train_offensive_share"] < 1
    s = judge.score(["you are a stupid idiot", "thanks, enjoy the trip", "", "日本語の返事です", "x" * 20000])
    assert s[0] < 0.5 < s[1] and s[2] == 1.0 and np.all((s >= 0) & (s <= 1))
    loaded = SafetyJudge.load(judge.save(tmp_path / "safety"))
    assert np.allclose(loaded.score(NICE + RUDE), judge.score(NICE + RUDE))
    acc = pairwise_accuracy(judge.score, rated_root / "hh_rlhf", n_bootstrap=50)
    assert acc["pairs"] == 8 and acc["accuracy"] > 0.8 and acc["ci"][0] <= acc["accuracy"] <= acc["ci"][1]
    with pytest.raises(FileNotFoundError, match="safety_data"):
        SafetyJudge.load(tmp_path / "none")


def _dialogues(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        good = i % 2 == 0
        msgs = []
        for t in range(3 + i % 3):
            msgs.append({"role": "user", "content": f"tell me about topic {t} please, i like it a lot" if good else "what?"})
            msgs.append({"role": "assistant", "content": NICE[(i + t) % 6] if good else "ok"})
        out.append({"id": f"d{i}", "messages": msgs, "persona": ["i like trips."] if good else [],
                    "score": float(4 + rng.random() if good else 1 + rng.random()), "source": "convai2"})
    return out


def test_dialogue_judge_reads_the_whole_conversation(tiny_encoder, tmp_path):
    ds = _dialogues(60)
    x = dialogue_features(tiny_encoder, [d["messages"] for d in ds], [d["persona"] for d in ds])
    assert x.shape == (60, len(FEATURES)) and np.all(np.isfinite(x))
    judge, m = train_dialogue_judge(tiny_encoder, ds)
    assert m["test_spearman_convai2"] > 0.5 and m["train_dialogues"] >= 10
    loaded = DialogueJudge.load(judge.save(tmp_path / "dialogue"))
    convs = [d["messages"] for d in ds[:4]] + [[], [{"role": "assistant", "content": ""}]]
    s = loaded.score(tiny_encoder, convs)
    assert s.shape == (6,) and np.all(np.isfinite(s)) and np.all((s >= 0) & (s <= 1))
    with pytest.raises(ValueError, match="no rated dialogues"):
        train_dialogue_judge(tiny_encoder, [])
    ridge, m2 = train_dialogue_judge(tiny_encoder, ds, kind="ridge")
    assert m2["test_spearman_convai2"] > 0.5
    assert np.allclose(DialogueJudge.load(ridge.save(tmp_path / "ridge")).score(tiny_encoder, convs),
                       ridge.score(tiny_encoder, convs))


def test_dialogue_targets_keep_the_level_of_corpora_rated_on_one_scale():
    # Two user-satisfaction corpora share the 1-5 overall scale: a corpus rated higher stays higher after
    # standardising (meta-eval pools their raw ratings); ConvAI2's stars are standardised on their own.
    ds = ([{"source": "satisfaction-SGD", "score": s} for s in (3.0, 4.0, 3.5, 4.5)]
          + [{"source": "satisfaction-CCPE", "score": s} for s in (2.0, 3.0, 2.5, 3.5)]
          + [{"source": "convai2", "score": s} for s in (1.0, 5.0, 2.0, 4.0)])
    z = standardized_scores(ds, np.zeros(len(ds), dtype=bool))
    assert z[:4].mean() > 0.5 > -0.5 > z[4:8].mean()
    assert np.allclose(z[:8], (np.array([d["score"] for d in ds[:8]]) - 3.25) / np.std([d["score"] for d in ds[:8]]),
                       atol=1e-6)
    assert abs(z[8:].mean()) < 1e-9 and abs(z[8:].std() - 1) < 1e-6
    # Only the training side sets the mean and spread.
    test = np.array([False] * 3 + [True] + [False] * 8)
    z2 = standardized_scores(ds, test)
    ref = np.array([d["score"] for d, t in zip(ds[:8], test[:8]) if not t])
    assert np.isclose(z2[3], (4.5 - ref.mean()) / ref.std(), atol=1e-6)


def test_dialogue_judge_load_refuses_old_formats_and_foreign_types(tiny_encoder, tmp_path):
    import json

    import skops.io as sio

    judge, _ = train_dialogue_judge(tiny_encoder, _dialogues(40))
    d = judge.save(tmp_path / "dialogue")
    old = tmp_path / "old"
    old.mkdir()
    (old / "judge.json").write_text(json.dumps({"type": "dialogue-ridge", "features": list(FEATURES)}))
    with pytest.raises(ValueError, match="retrain it"):
        DialogueJudge.load(old)
    # A model file holding anything but scikit-learn / numpy objects is not loaded (skops, no pickle).
    from collections import Counter

    sio.dump({"model": judge.model, "extra": Counter("aab")}, d / "model.skops")
    with pytest.raises(ValueError, match="refusing to load"):
        DialogueJudge.load(d)


@pytest.fixture(scope="module")
def cross_model(tmp_path_factory):
    dialogues = [{"id": f"c{i}", "turns": [f"hi {i}", NICE[i % 6], f"do you like trips {i}?", NICE[(i + 1) % 6]],
                  "personas": [["i like trips."], ["i am a cook."]]} for i in range(24)]
    ex = next_utterance_examples(dialogues, random.Random(0), 0)
    assert {"relevance", "personality"} <= {k for e in ex for k in e["labels"]}
    model, m = train_cross_encoder(ex[:80], ex[80:120], models.resolve_encoder("tiny-bert"),
                                   CrossSettings(max_steps=3, batch_size=8, eval_every=2, max_length=48), log=None)
    assert m["steps"] == 3 and m["best_step"] in (0, 2, 3)
    return CrossEncoderHeads.load(model.save(tmp_path_factory.mktemp("cross")))


def test_cross_encoder_heads_agree_with_score_head_and_survive_bad_input(cross_model, tiny_encoder, personas):
    sc = RewardScorer(tiny_encoder, learned=cross_model.as_heads())
    ctx = [{"role": "user", "content": "I lost my keys, what should I do?"}]
    replies = ["Retrace your steps.", "", "x" * 5000, "Je ne sais pas, désolé.", "🙂🙂"]
    pers = [personas[0], None, personas[1], None, personas[2]]
    batch = sc.score([ctx] * 5, replies, pers)
    for head in HEADS:
        assert np.all(np.isfinite(batch.heads[head])) and np.all((batch.heads[head] >= 0) & (batch.heads[head] <= 1))
        assert np.allclose(sc.score_head(head, [ctx] * 5, replies, pers), batch.heads[head], atol=1e-5), head
        assert f"{head}_untrained" in batch.details
    assert batch.heads["personality"][1] == 0.5  # no persona card: neutral, as every personality head
    assert set(TASKS) == set(HEADS)


def test_capped_dev_split_keeps_every_task_and_no_training_dialogue():
    # cross_examples concatenates sources: rated turns first, then next-utterance and persona pairs.
    examples = ([{"group": f"sat-{i // 3}", "labels": {"engagement": 0.5}} for i in range(300)]
                + [{"group": f"dd-{i // 3}", "labels": {"relevance": float(i % 2)}} for i in range(300)]
                + [{"group": f"pc-{i // 3}", "labels": {"personality": float(i % 2)}} for i in range(300)])
    train, dev = split_dev(examples, 0.3, 13, max_dev=40)
    assert len(dev) == 40
    assert {"engagement", "relevance", "personality"} <= {t for e in dev for t in e["labels"]}
    assert not {e["group"] for e in train} & {e["group"] for e in dev}
    full_train, full_dev = split_dev(examples, 0.3, 13)
    assert full_train == train and len(full_train) + len(full_dev) == len(examples)


def test_cross_encoder_refuses_other_tasks(tmp_path):
    (tmp_path / "head.json").write_text(json.dumps({"tasks": ["charm"]}))
    with pytest.raises(ValueError, match="tasks"):
        CrossEncoderHeads.load(tmp_path)


def test_llm_judge_expected_score(tiny_policy_dir):
    judge = LLMJudge(tiny_policy_dir, qualities=("overall", "harmless"), batch_size=2, backend="transformers")
    ctx = [[{"role": "user", "content": "hi, how are you?"}]] * 3
    out = judge.score(ctx, ["fine, thanks! and you?", "", "très bien"], [["i like tea."], None, None])
    for q in ("overall", "harmless"):
        assert out[q].shape == (3,) and out[q][1] == 0.0 and 0 < out[q][0] < 1 and np.isfinite(out[q]).all()
    with pytest.raises(ValueError, match="unknown quality"):
        LLMJudge(tiny_policy_dir, qualities=("charm",))


def test_calibrated_weights_follow_the_ratings():
    rng = np.random.default_rng(0)
    heads = {h: rng.random(300) for h in HEADS}
    y = 2 * heads["relevance"] + heads["engagement"] + 0.1 * rng.normal(size=300)
    w = fit_weights(heads, y)
    assert set(w) == set(HEADS) and abs(sum(w.values()) - 1) < 1e-9 and min(w.values()) >= 0
    assert w["relevance"] > w["engagement"] > max(w["quality"], w["personality"])
    with pytest.raises(ValueError, match="at least"):
        fit_weights({h: v[:5] for h, v in heads.items()}, y[:5])


def test_pair_level_is_pairwise_accuracy():
    items = [{"context": [], "response": "x", "persona": [], "group": f"p{i // 2}",
              "ratings": {"harmless": float(i % 2 == 0)}} for i in range(40)]
    good = np.array([1.0 if i % 2 == 0 else 0.0 for i in range(40)])
    res = meta_eval.meta_evaluate(items, {"good": good, "flat": np.ones(40)}, n_bootstrap=50)
    assert res["ratings"]["harmless"]["level"] == "pair"
    rows = {r["head"]: r for r in res["rows"]}
    assert rows["good"]["spearman"] == 1.0 and rows["flat"]["spearman"] == 0.5 and rows["good"]["n"] == 20


def test_suite_scores_every_set_with_judges(rated_root, tiny_encoder, tmp_path):
    judge, _ = train_safety_judge(rated_root / "toxichat")
    result = run_suite(rated_root, RewardScorer(tiny_encoder), SuiteJudges(safety=judge),
                       SuiteLimits(max_pairs=5), n_bootstrap=30, progress=False)
    assert set(result["sets"]) == {"predictive_engagement", "holistic_eval", "hh_rlhf", "toxichat"}
    heads = {r["head"] for r in result["sets"]["toxichat"]["rows"]}
    assert {"composite", "baseline:length", "judge_safety", *HEADS} <= heads
    assert result["sets"]["hh_rlhf"]["ratings"]["harmless"]["level"] == "pair"
    table = summary_markdown(result)
    assert "| toxichat | safe |" in table and "pairwise accuracy" in table
    checks = head_checks(result)
    assert "engagement" in {c["head"] for c in checks} and "above length?" in table
    # The issue-17 questions as paired differences: composite - its best head, composite - length, head - length.
    diffs = result["sets"]["toxichat"]["contrasts"]
    assert {("composite", "baseline:length"), ("relevance", "baseline:length")} <= {(d["a"], d["b"]) for d in diffs}
    assert all(d["verdict"] in ("higher", "lower", "tie") for d in diffs)
    assert "composite_minus_best_head" in table and {c["verdict"] for c in checks} <= {"yes", "tie", "**no**"}
    assert meta_eval_cli.main(["meta-eval", str(tmp_path), "--no-fluency"]) == 2  # a folder without rated sets


@pytest.mark.shared_data
def test_real_rated_sets_convert():
    if not (SHARED_DATA / "toxichat").is_dir():
        pytest.skip(f"{SHARED_DATA} has no toxichat / predictive_engagement / holistic_eval / hh_rlhf")
    assert predictive_engagement_items(SHARED_DATA / "predictive_engagement")[1]["pairs_rated_1_5"] == 600
    assert holistic_items(SHARED_DATA / "holistic_eval")[1]["coherence_items"] == 200
    assert hh_rlhf_items(SHARED_DATA / "hh_rlhf")[1]["pairs"] >= 2300
    assert toxichat_items(SHARED_DATA / "toxichat", "test")[1]["items"] >= 590


def test_dialogue_features_best_moments_substance_and_echo(tiny_encoder):
    parrot = [{"role": "user", "content": "my laptop will not start after the update"},
              {"role": "assistant", "content": "my laptop will not start after the update"},
              {"role": "user", "content": "yes that is what i said"},
              {"role": "assistant", "content": "yes that is what i said"}]
    varied = [{"role": "user", "content": "my laptop will not start after the update"},
              {"role": "assistant", "content": "Try holding the power button for ten seconds, then restart."},
              {"role": "user", "content": "ok"},
              {"role": "assistant", "content": "ok"}]
    x = dialogue_features(tiny_encoder, [parrot, varied], [["i fix computers."], ["i fix computers."]])
    col = {f: x[:, k] for k, f in enumerate(FEATURES)}
    assert np.all(col["rel_top3"] >= col["rel_mean"] - 1e-9)
    assert np.all(col["persona_sim_top3"] >= col["persona_sim"] - 1e-9)
    assert col["echo_mean"][0] == 1.0 and col["echo_mean"][1] == 0.5   # "ok" after "ok" is a copy too
    assert col["substance_mean"][1] > 0 and np.isfinite(x).all()


def test_suite_scores_the_personality_judge_against_the_rated_persona():
    from convrl.eval.judge_scorers import contradictions
    from convrl.eval.judges import AGREEMENT, JudgePanel
    from convrl.meta_eval.suite import extra_columns, rated_persona

    card = rated_persona(["i have two dogs.", "", "i work as a nurse."])
    assert card.facts == ["i have two dogs.", "i work as a nurse."] and rated_persona([]) is None
    # A nameless card (ConvAI2 profiles have none) does not turn "my name is ..." into a contradiction.
    assert contradictions("hi, my name is sam and i love my dogs", card) == []
    assert contradictions("i don't have dogs", card)
    items = [{"context": [{"role": "user", "content": "what do you do?"}], "response": r,
              "persona": ["i have two dogs.", "i work as a nurse."], "group": f"g{i}", "ratings": {}}
             for i, r in enumerate(["i work as a nurse and walk my two dogs", "the weather is nice"])]
    panel = JudgePanel()
    scores: dict = {}
    extra_columns(items, scores, SuiteJudges(panel=panel), None, {})
    assert scores["judge_personality"][0] > scores["judge_personality"][1]
    no_persona = [{**it, "persona": []} for it in items]
    scores = {}
    extra_columns(no_persona, scores, SuiteJudges(panel=panel), None, {})
    assert "judge_personality" not in scores and "judge_relevance" in scores
    # Every judge evaluate uses says how far it agrees with people.
    assert {"judge_personality", "judge_relevance", "judge_emotion", "judge_engagement"} <= set(AGREEMENT)


def test_suite_scores_the_composite_as_rl_pays_it():
    """``composite_gated`` is the composite times RL's civility reward (rl.shaping.civility_gate): an insult that
    the heads pay for as on topic earns nothing, a civil reply keeps its composite."""
    from convrl.meta_eval.suite import extra_columns

    items = [{"context": [{"role": "user", "content": "what do you think of my plan?"}], "response": r,
              "group": f"g{i}", "ratings": {}}
             for i, r in enumerate(["I think your plan is thoughtful and could work well.",
                                    "Your plan is stupid and you are an idiot, shut up."])]
    scores = {"composite": np.array([0.6, 0.7])}
    extra_columns(items, scores, SuiteJudges(), None, {})
    assert scores["reward_civility"][0] == pytest.approx(1.0) and scores["reward_civility"][1] < 0.5
    np.testing.assert_allclose(scores["composite_gated"], scores["composite"] * scores["reward_civility"])
    assert scores["composite_gated"][1] < scores["composite_gated"][0]
    # The summary table carries it beside the plain composite.
    result = {"sets": {"toy": {"ratings": {"r": {"level": "response", "items": 2, "groups": 2}},
                               "rows": [{"head": "composite_gated", "rating": "r", "spearman": 0.5,
                                         "spearman_ci": [0.1, 0.9]}]}}}
    assert "composite_gated" in summary_markdown(result) and "+0.50 [+0.10, +0.90]" in summary_markdown(result)
