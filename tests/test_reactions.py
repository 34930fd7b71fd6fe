"""The dialogue judge's reaction features: lexical cues and the turn-level reaction model (rewards/reactions.py)."""

import numpy as np
import pytest

from convrl.rewards.dialogue import DialogueJudge, dialogue_features, train_dialogue_judge
from convrl.rewards.reactions import (CUE_FEATURES, MIN_EXCHANGES, REACTION_FEATURES, REACTION_FILE, ReactionModel,
                                      crossfit_reaction, cue_features)

GOOD = [("Your table is booked, the reference number is XYZ12.", "Thanks, that's perfect!", 5.0),
        ("I found a cheap place in the centre, shall I book it?", "Great, yes please book it.", 4.5)]
BAD = [("Sorry, there are no restaurants matching that.", "No, I said the centre, not the north.", 1.5),
       ("Unfortunately I can't find that train.", "That's wrong again, I asked for Monday instead.", 1.0)]


def _session(i: int, good: bool, rated: bool = True) -> dict:
    msgs = [{"role": "user", "content": f"I need a restaurant for {2 + i % 5} people tonight."}]
    for t, (bot, user, score) in enumerate((GOOD if good else BAD) * (1 + i % 2)):
        msgs.append({"role": "assistant", "content": bot.replace("XYZ12", f"R{i}{t}")})
        if rated:
            msgs[-1]["ratings"] = {"satisfaction": score}
        msgs.append({"role": "user", "content": user})
    return {"id": f"s{i}", "messages": msgs, "persona": [], "score": 4.5 if good else 1.5,
            "source": "satisfaction-TEST"}


def test_cue_features_find_apologies_corrections_done_and_thanks():
    x = cue_features([_session(0, True)["messages"], _session(0, False)["messages"], []])
    col = {f: x[:, k] for k, f in enumerate(CUE_FEATURES)}
    assert x.shape == (3, len(CUE_FEATURES)) and np.all(x[2] == 0)
    assert col["bot_done"][0] > 0 == col["bot_done"][1]
    assert col["user_thanks_end"][0] == 1.0 and col["user_thanks_end"][1] == 0.0
    assert col["bot_sorry"][1] == 1.0 and col["bot_sorry"][0] == 0.0
    # Both replies to the assistant corrected it; the opening request did not.
    assert col["user_correct"][1] == pytest.approx(2 / 3) and col["user_correct_count"][1] == 2.0


def test_reaction_model_learns_from_rated_turns_and_never_reads_ratings():
    train = [_session(i, i % 2 == 0)["messages"] for i in range(60)]
    model = ReactionModel.fit(train)
    assert model.pipeline is not None and model.exchanges_fitted == 60 * 3
    new = [_session(101, True, rated=False)["messages"], _session(102, False, rated=False)["messages"]]
    f = model.features(new)
    assert f.shape == (2, len(REACTION_FEATURES)) and np.all(f[0] > f[1])
    # Ratings are labels only: a conversation scores the same with or without them.
    assert np.allclose(model.features([_session(101, True)["messages"]]), f[:1])
    # Too few rated exchanges: no model, features 0 (the trees then ignore them).
    few = ReactionModel.fit(train[: MIN_EXCHANGES // 3 - 1])
    assert few.pipeline is None and np.all(few.features(new) == 0)


def test_crossfit_scores_training_rows_out_of_fold():
    ds = [_session(i, i % 3 != 0) for i in range(80)]
    convs, ids = [d["messages"] for d in ds], [d["id"] for d in ds]
    train = np.array([i < 60 for i in range(80)])
    feats, full = crossfit_reaction(convs, train, ids)
    assert full.exchanges_fitted == sum(len(c) // 2 for c in convs[:60])
    assert np.allclose(feats[~train], full.features(convs[60:]))            # unseen rows: the returned model
    in_sample = full.features(convs[:60])
    assert not np.allclose(feats[train], in_sample)                        # seen rows: a model without them
    good = np.array([i % 3 != 0 for i in range(80)])
    assert feats[train & good, 0].mean() > feats[train & ~good, 0].mean()


def test_dialogue_judge_keeps_its_reaction_model(tiny_encoder, tmp_path):
    ds = [_session(i, i % 2 == 0) for i in range(70)]
    judge, m = train_dialogue_judge(tiny_encoder, ds)
    assert m["reaction_exchanges"] > 0 and judge.reaction.pipeline is not None
    d = judge.save(tmp_path / "dialogue")
    assert (d / REACTION_FILE).is_file()
    convs = [_session(200 + k, k % 2 == 0, rated=False)["messages"] for k in range(4)]
    loaded = DialogueJudge.load(d)
    s = loaded.score(tiny_encoder, convs)
    assert np.allclose(s, judge.score(tiny_encoder, convs)) and s[0] > s[1]
    assert loaded.reaction.exchanges_fitted == judge.reaction.exchanges_fitted
    # The judge's features for new conversations carry the saved reaction model's predictions.
    feats = dialogue_features(tiny_encoder, convs, None, loaded.reaction)[:, -len(REACTION_FEATURES):]
    assert np.allclose(feats, judge.reaction.features(convs)) and np.all(feats[0] > feats[1])
    assert np.all(dialogue_features(tiny_encoder, convs)[:, -len(REACTION_FEATURES):] == 0)


def test_reaction_model_load_refuses_foreign_types(tmp_path):
    from collections import Counter

    import skops.io as sio

    sio.dump({"extra": Counter("aab")}, tmp_path / REACTION_FILE)
    with pytest.raises(ValueError, match="refusing to load"):
        ReactionModel.load(tmp_path)
    assert ReactionModel.load(tmp_path / "none").pipeline is None
    ReactionModel().save(tmp_path)                      # saving "no model" over a folder clears the old file
    assert not (tmp_path / REACTION_FILE).exists() and ReactionModel.load(tmp_path).pipeline is None


def test_monitor_finds_the_reaction_model_the_reward_stage_saved(tmp_path):
    from convrl.config import load_config
    from convrl.stages.monitoring import reaction_model

    assert reaction_model(load_config("tiny")) is None                        # no reward models: no reaction column
    (tmp_path / "dialogue").mkdir()
    ReactionModel.fit([_session(i, i % 2 == 0)["messages"] for i in range(30)]).save(tmp_path / "dialogue")
    model = reaction_model(load_config("tiny", [f"monitor.reward_models={tmp_path}"]))
    replies, answers = ["Booked, reference R1.", "Sorry, no trains."], ["Thanks, that's perfect!", "No, I said Monday."]
    p = model.predict(replies, answers)
    assert p[0] > p[1] and np.all(np.isnan(ReactionModel().predict(replies, answers)))


def _satisfaction_folder(root, n: int = 70):
    """A user-satisfaction folder in the released format: tab-separated turns, per-turn scores, an OVERALL line."""
    blocks = []
    for i in range(n):
        good = i % 2 == 0
        lines = [f"USER\tI need a restaurant for {2 + i % 5} people tonight.\tRestaurant-Inform\t3,3,3"]
        for bot, user, score in (GOOD if good else BAD) * (1 + (i // 2) % 2):
            s = ",".join([str(int(round(score)))] * 3)
            lines += [f"SYSTEM\t{bot}\t", f"USER\t{user}\t\t{s}"]
        lines.append(f"USER\tOVERALL\t\t{'5,4,5' if good else '1,2,1'}")
        blocks.append("\n".join(lines))
    root.mkdir()
    (root / "MWOZ.txt").write_text("\n\n".join(blocks) + "\n")
    return root


def test_reward_stage_trains_the_reaction_model_and_the_monitor_uses_it(tiny_encoder, tmp_path):
    from convrl.config import load_config
    from convrl.rewards.judgement import train_human_judgement
    from convrl.stages.monitoring import reaction_model

    folder = _satisfaction_folder(tmp_path / "user_satisfaction")
    rc = load_config("tiny", [f"rewards.dialogue_data=[{folder}]"]).rewards
    entries, metrics, _ = train_human_judgement(rc, tiny_encoder, "", tmp_path / "rm")
    assert entries["dialogue_judge"] and metrics["dialogue_judge/reaction_exchanges"] > 0
    assert (tmp_path / "rm" / "dialogue" / REACTION_FILE).is_file()
    model = reaction_model(load_config("tiny", [f"monitor.reward_models={tmp_path / 'rm'}"]))
    p = model.predict(["Booked, reference R9.", "Sorry, no trains."], ["Thanks, that's perfect!", "No, I said Monday."])
    assert p[0] > p[1]


def test_meta_eval_reads_each_rated_reply_with_the_users_answer(tiny_encoder):
    from convrl.meta_eval.suite import SuiteJudges, answer_to, extra_columns

    ds = [_session(i, i % 2 == 0) for i in range(70)]
    judge, _ = train_dialogue_judge(tiny_encoder, ds)
    d = _session(500, True)
    msgs = d["messages"]
    items = [{"context": msgs[:k], "response": m["content"], "persona": [], "group": d["id"],
              "ratings": dict(m["ratings"])} for k, m in enumerate(msgs) if m["role"] == "assistant"]
    assert answer_to(msgs, items[0]) == msgs[2]["content"]
    assert answer_to(msgs[:-1], items[-1]) == ""                    # the last reply, not answered
    assert answer_to(msgs, {**items[0], "response": "never said"}) == ""
    scores: dict = {}
    extra_columns(items, scores, SuiteJudges(dialogue=judge), tiny_encoder, {d["id"]: d})
    assert scores["reaction"].shape == (len(items),) and np.isfinite(scores["reaction"]).all()
    # The same replies, answered with corrections instead of thanks.
    upset = [dict(m) for m in msgs]
    for k in range(2, len(upset), 2):
        upset[k]["content"] = "No, that's wrong, I said the centre."
    scores_upset: dict = {}
    extra_columns(items, scores_upset, SuiteJudges(dialogue=judge), tiny_encoder, {d["id"]: {**d, "messages": upset}})
    assert scores["reaction"].mean() > scores_upset["reaction"].mean()
    off: dict = {}
    extra_columns(items, off, SuiteJudges(dialogue=judge), tiny_encoder, {})  # not a dialogue set: no column
    assert "reaction" not in off


# The fine-tuned encoder reaction model (rewards/reaction_encoder.py), on the tiny random BERT.

def _encoder_model(convs, **kw):
    from convrl import models
    from convrl.rewards.reaction_encoder import EncoderReactionModel

    return EncoderReactionModel.fit(convs, models.resolve_encoder("tiny-bert"), **kw)


def test_encoder_reaction_model_learns_from_rated_turns_and_never_reads_ratings(one_thread):
    train = [_session(i, i % 2 == 0)["messages"] for i in range(60)]
    model = _encoder_model(train, epochs=12, lr=1e-3, head_lr=3e-3, batch_size=16, seed=1)
    assert model.fitted and model.exchanges_fitted == 60 * 3
    new = [_session(101, True, rated=False)["messages"], _session(102, False, rated=False)["messages"]]
    f = model.features(new)
    assert f.shape == (2, len(REACTION_FEATURES)) and np.all(np.isfinite(f)) and np.all(f[0] > f[1])
    # On the raters' scale (1-5), not the standardised one it trains on.
    assert 3.0 < f[0, 0] < 5.6 and 0.5 < f[1, 0] < 3.0
    assert np.allclose(model.features([_session(101, True)["messages"]]), f[:1], atol=1e-6)
    reply, answer = GOOD[0][0], GOOD[0][1]
    assert model.predict([reply], [answer])[0] == pytest.approx(model.predict_texts([f"SYS {reply} || USR {answer}"])[0])
    few = _encoder_model(train[: MIN_EXCHANGES // 3 - 1])
    assert not few.fitted and np.all(few.features(new) == 0) and np.isnan(few.predict(["a"], ["b"])).all()


def test_encoder_reaction_model_saves_loads_and_replaces_the_tfidf_one(one_thread, tmp_path):
    from convrl.rewards.reaction_encoder import EncoderReactionModel, has_reaction, load_reaction

    convs = [_session(i, i % 2 == 0)["messages"] for i in range(40)]
    ReactionModel.fit(convs).save(tmp_path)
    assert (tmp_path / REACTION_FILE).is_file() and isinstance(load_reaction(tmp_path), ReactionModel)
    model = _encoder_model(convs, epochs=1)
    model.save(tmp_path)
    assert not (tmp_path / REACTION_FILE).is_file() and has_reaction(tmp_path)  # the older TF-IDF model is gone
    loaded = load_reaction(tmp_path)
    assert isinstance(loaded, EncoderReactionModel) and loaded.exchanges_fitted == model.exchanges_fitted
    assert np.allclose(loaded.features(convs[:4]), model.features(convs[:4]), atol=1e-5)
    ReactionModel.fit(convs).save(tmp_path)  # and back: a TF-IDF judge saved over it loads as TF-IDF
    assert isinstance(load_reaction(tmp_path), ReactionModel)
    EncoderReactionModel().save(tmp_path)  # unfitted: nothing left to load
    assert not has_reaction(tmp_path) and not load_reaction(tmp_path).fitted


def test_dialogue_judge_with_the_encoder_reaction_model(one_thread, tiny_encoder, tmp_path):
    from convrl import models
    from convrl.rewards.reaction_encoder import EncoderReactionModel, encoder_reaction_fit

    calls = []
    fit = encoder_reaction_fit(models.resolve_encoder("tiny-bert"), epochs=1)
    ds = [_session(i, i % 2 == 0) for i in range(70)]
    judge, m = train_dialogue_judge(tiny_encoder, ds, reaction_fit=lambda c: calls.append(len(c)) or fit(c),
                                    reaction_folds=2)
    # Two out-of-fold models and the one kept: the last call saw every training dialogue.
    assert len(calls) == 3 and calls[-1] == calls[0] + calls[1] == m["train_dialogues"]
    assert isinstance(judge.reaction, EncoderReactionModel) and judge.reaction.fitted
    loaded = DialogueJudge.load(judge.save(tmp_path / "dialogue"))
    assert isinstance(loaded.reaction, EncoderReactionModel)
    convs = [_session(200 + k, k % 2 == 0, rated=False)["messages"] for k in range(4)]
    assert np.allclose(loaded.score(tiny_encoder, convs), judge.score(tiny_encoder, convs), atol=1e-5)


def test_reward_stage_trains_the_encoder_reaction_model_when_asked(one_thread, tiny_encoder, tmp_path):
    from convrl import models
    from convrl.config import ConfigError, load_config
    from convrl.rewards.judgement import train_human_judgement
    from convrl.rewards.reaction_encoder import ENCODER_REACTION_DIR, EncoderReactionModel
    from convrl.stages.monitoring import reaction_model

    folder = _satisfaction_folder(tmp_path / "user_satisfaction")
    rc = load_config("tiny", [f"rewards.dialogue_data=[{folder}]", "rewards.reaction_model=encoder"]).rewards
    entries, metrics, _ = train_human_judgement(rc, tiny_encoder, models.resolve_encoder("tiny-bert"), tmp_path / "rm",
                                                log=None)
    assert entries["dialogue_judge"] and metrics["dialogue_judge/reaction_exchanges"] > 0
    folder = tmp_path / "rm" / "dialogue"
    assert (folder / ENCODER_REACTION_DIR).is_dir() and not (folder / REACTION_FILE).exists()
    model = reaction_model(load_config("tiny", [f"monitor.reward_models={tmp_path / 'rm'}"]))
    assert isinstance(model, EncoderReactionModel) and model.fitted
    assert np.isfinite(model.predict(["Booked, reference R9."], ["Thanks, that's perfect!"])).all()
    with pytest.raises(ConfigError, match="reaction_model must be tfidf or encoder"):
        load_config("tiny", ["rewards.reaction_model=bert"])


def test_reaction_fitter_picks_the_fit_and_folds_by_kind():
    from convrl.rewards.reaction_encoder import reaction_fitter

    assert reaction_fitter("tfidf", "") == (None, 5)
    fit, folds = reaction_fitter("encoder", "unused-until-called")
    assert callable(fit) and folds == 2
    with pytest.raises(ValueError, match="tfidf or encoder"):
        reaction_fitter("bert", "")
