"""Source loaders on small synthetic files: each format in, mapped to the canonical schema.

Fast (no models, no ../shared). Run::

    python -m pytest tests/test_sources.py -q
"""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest

from convrl.data.ingest import LOADERS, IngestError, ingest
from convrl.data.schema import PERSONA_COLUMNS, TURN_COLUMNS

LOOSE = dict(quarantine_threshold=1.0, val_fraction=0.0, test_fraction=0.0)


def _convs(res) -> dict[str, list[tuple[str, str]]]:
    t = res.turns.sort_values(["conversation_id", "turn_index"])
    return {cid: list(zip(g["role"], g["text"])) for cid, g in t.groupby("conversation_id")}


def test_every_documented_kind_is_registered():
    kinds = {"chatterbot", "jsonl", "sharegpt", "csv", "parquet", "hf", "dir", "dailydialog", "empatheticdialogues",
             "personachat", "blended_skill_talk", "convai2_eval", "user_satisfaction", "goemotions"}
    assert kinds <= set(LOADERS)


# ------------------------------------------------------------------ chat logs

def test_openai_jsonl_persona_feedback_labels(tmp_path):
    p = tmp_path / "chats.jsonl"
    rec = {"id": "c1", "persona": "empathetic_coach", "messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "I failed my exam"}], "emotion": "sadness"},
        {"role": "assistant", "content": "That hurts. Want to talk?", "act": "question",
         "feedback": {"rating": 5, "thumb": "up"}}]}
    card = {"persona": {"persona_id": "pirate", "name": "Pirate", "traits": {"humor": 0.8}},
            "messages": [{"role": "user", "content": "ahoy"}, {"role": "developer", "content": "x"},
                         {"role": "assistant", "content": "arr", "feedback": {"thumb": "down"}}]}
    p.write_text(json.dumps(rec) + "\n" + json.dumps(card) + "\n")
    res = ingest([f"jsonl:{p}"], **LOOSE)
    t = res.turns.set_index(["conversation_id", "turn_index"])
    assert t.loc[("jsonl-c1", 1), "emotion"] == "sad" and t.loc[("jsonl-c1", 1), "emotion_fine"] == "sadness"
    assert t.loc[("jsonl-c1", 2), "feedback_rating"] == 5 and t.loc[("jsonl-c1", 2), "feedback_thumb"] == 1
    assert t.loc[("jsonl-c1", 2), "act"] == "question" and t.loc[("jsonl-c1", 2), "persona_id"] == "empathetic_coach"
    assert t.loc[("jsonl-chats-2", 1), "role"] == "system"  # OpenAI's newer "developer" role
    assert t.loc[("jsonl-chats-2", 2), "feedback_thumb"] == 0
    assert list(res.personas["persona_id"]) == ["pirate"] and list(res.personas.columns) == PERSONA_COLUMNS


def test_jsonl_bad_feedback_and_labels_are_quarantined(tmp_path):
    p = tmp_path / "c.jsonl"
    ok = {"role": "user", "content": "hi"}
    lines = [{"messages": [ok, {"role": "assistant", "content": "x", "feedback": {"rating": 9}}]},
             {"messages": [ok, {"role": "assistant", "content": "x", "feedback": {"thumb": "meh"}}]},
             {"messages": [{**ok, "emotion": "hangry"}]},
             {"messages": [ok], "persona": 7},
             {"messages": [ok, {"role": "assistant", "content": "fine"}]}]
    p.write_text("\n".join(json.dumps(x) for x in lines))
    res = ingest([f"jsonl:{p}"], **LOOSE)
    reasons = " | ".join(res.quarantine["detail"])
    for part in ("rating 9", "thumb 'meh'", "emotion label 'hangry'", "'persona' is a JSON number"):
        assert part in reasons
    assert list(res.quarantine["category"]) == ["invalid_value"] * 3 + ["invalid_type"]
    assert res.stats["conversations"] == 1


def test_sharegpt_json_list_and_roles(tmp_path):
    p = tmp_path / "sg.json"
    p.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "Hello"},
                                      {"from": "gpt", "value": "Hi!"}, {"from": "user", "value": "Bye"},
                                      {"from": "bot", "value": "See you"}]},
        {"id": "b", "conversations": [{"from": "narrator", "value": "once"}]},
    ]))
    res = ingest([f"sharegpt:{p}"], **LOOSE)
    assert _convs(res)["sharegpt-a"] == [("system", "sys"), ("user", "Hello"), ("assistant", "Hi!"),
                                         ("user", "Bye"), ("assistant", "See you")]
    assert "unknown role 'narrator'" in res.quarantine["detail"].iloc[0]
    assert res.quarantine["location"].iloc[0] == "sg.json:record 1"


def test_custom_role_names_option(tmp_path):
    p = tmp_path / "sg.jsonl"
    p.write_text(json.dumps({"conversations": [{"from": "Alice", "value": "hi"}, {"from": "Bob", "value": "yo"}]}))
    res = ingest([f"sharegpt:{p}?roles=alice:user,bob:assistant"], **LOOSE)
    assert list(res.turns["role"]) == ["user", "assistant"]
    with pytest.raises(IngestError, match="unknown option"):
        ingest([f"sharegpt:{p}?rolez=a:user"])


# ------------------------------------------------------------------ tables

def test_csv_column_mapping_ordering_and_bad_rows(tmp_path):
    p = tmp_path / "turns.csv"
    p.write_text("cid,idx,speaker,utt,stars\n"
                 "a,1,bot,Hello there,4\n"
                 "a,0,customer,Hi,\n"
                 "b,0,user,Hey,\n"
                 "b,1,robot,beep,\n"
                 "c,0,user,Only me,\n"
                 "c,1,assistant,Rated badly,7\n"
                 ",0,user,orphan,\n"
                 "d,0,user,ok,\n"
                 "d,1,assistant,fine,2\n")
    res = ingest([f"csv:{p}?conversation=cid&turn=idx&role=speaker&text=utt&rating=stars"], **LOOSE)
    convs = _convs(res)
    assert convs["turns-a"] == [("user", "Hi"), ("assistant", "Hello there")]
    assert set(convs) == {"turns-a", "turns-d"}
    assert res.turns.set_index("conversation_id").loc["turns-d"].iloc[1]["feedback_rating"] == 2
    reasons = res.quarantine["detail"].tolist()
    assert any("unknown role 'robot'" in r for r in reasons)
    assert any("rating '7'" in r for r in reasons)
    assert any("no conversation id" in r for r in reasons)
    assert len(res.quarantine) == 3


def test_csv_missing_column_and_single_turn_rows(tmp_path):
    p = tmp_path / "sit.csv"
    p.write_text("text,label\nI lost my dog,sad\nI won!,joyful\n")
    res = ingest([f"csv:{p}?conversation=@row&role=@user&emotion=label"], **LOOSE)
    assert sorted(res.turns["emotion"]) == ["happy", "sad"]
    with pytest.raises(IngestError, match="missing column 'conversation_id'"):
        ingest([f"csv:{p}"], **LOOSE)


def test_parquet_turn_rows(tmp_path):
    p = tmp_path / "t.parquet"
    pd.DataFrame({"conversation_id": ["x", "x", "y", "y"], "role": ["user", "assistant", "human", "gpt"],
                  "text": ["a", "b", "c", "d"], "feedback_thumb": [None, 1.0, None, 0.0]}).to_parquet(p)
    res = ingest([f"parquet:{p}"], **LOOSE)
    assert _convs(res)["t-y"] == [("user", "c"), ("assistant", "d")]
    assert res.turns["feedback_thumb"].dropna().tolist() == [1.0, 0.0]


def test_hf_saved_dataset_dict_keeps_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    msgs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(4)]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"messages": msgs[:3]}),
                               "test": datasets.Dataset.from_dict({"messages": msgs[3:]})})
    dd.save_to_disk(str(tmp_path / "chat_ds"))
    res = ingest([f"hf:{tmp_path / 'chat_ds'}?split=source"], **LOOSE)
    by = res.turns.drop_duplicates("conversation_id").set_index("conversation_id")["split"].to_dict()
    assert sorted(by.values()) == ["test", "train", "train", "train"]
    rows = datasets.Dataset.from_dict({"conversation_id": ["k", "k"], "role": ["user", "assistant"],
                                       "text": ["hi", "yo"]})
    rows.save_to_disk(str(tmp_path / "rows_ds"))
    assert _convs(ingest([f"hf:{tmp_path / 'rows_ds'}"], **LOOSE)) == {"hf-rows_ds-k": [("user", "hi"), ("assistant", "yo")]}
    with pytest.raises(IngestError, match="could not be loaded from the hub"):
        ingest(["hf:surely/not-a-dataset-convrl"], **LOOSE)


# ------------------------------------------------------------------ corpora

def _dd_zip(path, n=4):
    dialogues = [{"data_split": ["train", "validation", "test", "train"][i % 4], "dialogue_id": f"dailydialog-x-{i}",
                  "turns": [{"speaker": "user", "utterance": f"Hello number {i}, how are you?", "emotion": "happiness",
                             "dialogue_acts": {"binary": [{"intent": "question"}]}},
                            {"speaker": "system", "utterance": f"Fine {i}.", "emotion": "no emotion",
                             "dialogue_acts": {"binary": [{"intent": "inform"}]}}]} for i in range(n)]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/dialogues.json", json.dumps(dialogues))


def test_dailydialog_convlab_zip_labels_and_source_split(tmp_path):
    _dd_zip(tmp_path / "data.zip")
    res = ingest([f"dailydialog:{tmp_path}?split=source"], **LOOSE)
    t = res.turns
    assert set(t["emotion"]) == {"happy", "neutral"} and set(t["act"]) == {"question", "inform"}
    assert list(t.drop_duplicates("conversation_id")["split"]) == ["train", "validation", "test", "train"]
    res = ingest([f"dailydialog:{tmp_path / 'data.zip'}?splits=test"], **LOOSE)
    assert res.stats["conversations"] == 1


def test_dailydialog_original_release(tmp_path):
    d = tmp_path / "validation"
    d.mkdir()
    (d / "dialogues_validation.txt").write_text(
        "Good morning , sir . Is there a bank near here ? __eou__ There is one . __eou__\n"
        "I can't go . __eou__ Why not ? __eou__ It's raining . __eou__\n")
    (d / "dialogues_emotion_validation.txt").write_text("0 4 \n5 0 \n")  # second line: too few labels
    (d / "dialogues_act_validation.txt").write_text("2 1 \n1 2 1 \n")
    res = ingest([f"dailydialog:{tmp_path}"], **LOOSE)
    assert _convs(res)["dailydialog-validation-0"] == [("user", "Good morning, sir. Is there a bank near here?"),
                                                       ("assistant", "There is one.")]
    assert list(res.turns["emotion"]) == ["neutral", "happy"]
    assert "3 turns but emotion labels [5, 0]" in res.quarantine["detail"].iloc[0]


def test_empatheticdialogues_json_and_csv(tmp_path):
    (tmp_path / "valid.json").write_text(json.dumps([{"conv_id": "hit:1_conv:2", "prompt": "My dog ran away.",
                                                      "label": "devastated", "utterence": ["He ran off.", "Oh no!"]}]))
    res = ingest([f"empatheticdialogues:{tmp_path / 'valid.json'}"], **LOOSE)
    t = res.turns
    assert list(t["role"]) == ["system", "user", "assistant"] and t["text"].iloc[0] == "Situation: My dog ran away."
    assert t["emotion"].iloc[1] == "sad" and t["emotion_fine"].iloc[1] == "devastated"
    res = ingest([f"empatheticdialogues:{tmp_path / 'valid.json'}?situation=none"], **LOOSE)
    assert list(res.turns["role"]) == ["user", "assistant"]
    (tmp_path / "train.csv").write_text(
        "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\n"
        "hit:0_conv:1,1,furious,Someone hit my car_comma_ twice,1,They hit my car_comma_ again!,5|5,\n"
        "hit:0_conv:1,2,furious,Someone hit my car_comma_ twice,2,That is awful.,5|5,\n")
    res = ingest([f"empatheticdialogues:{tmp_path / 'train.csv'}?split=source"], **LOOSE)
    assert res.turns["text"].iloc[1] == "They hit my car, again!" and res.turns["emotion"].iloc[1] == "angry"
    assert set(res.turns["split"]) == {"train"}


PARLAI = """1 your persona: i love cats.
2 your persona: i am a chef.
3 hi , how are you ?\ti am great , cooking for my cats .
4 nice ! what do you cook ?\tfish , mostly .
1 your persona: i run marathons.
2 __SILENCE__\thello ! i just finished a run .
3 wow , how far ?\ttwenty miles .
"""


def test_personachat_parlai_personas_into_table(tmp_path):
    p = tmp_path / "valid_self_original_no_cands.txt"
    p.write_text(PARLAI)
    res = ingest([f"personachat:{p}"], **LOOSE)
    convs = _convs(res)
    assert convs["personachat-valid_self_original_no_cands-0"][:2] == [
        ("user", "hi , how are you ?"), ("assistant", "i am great , cooking for my cats .")]
    # the partner was silent: the assistant opens
    assert convs["personachat-valid_self_original_no_cands-1"][0] == ("assistant", "hello ! i just finished a run .")
    assert len(res.personas) == 2
    facts = {r["persona_id"]: json.loads(r["facts"]) for _, r in res.personas.iterrows()}
    pid = res.turns["persona_id"].iloc[0]
    assert facts[pid] == ["i love cats.", "i am a chef."]


def test_persona_json_formats(tmp_path):
    (tmp_path / "val.json").write_text(json.dumps([
        {"dialogue": ["hi", "hello, i fix cars", "cool"], "speaker persona": ["i sing."],
         "listener persona": ["i am a mechanic."]},
        {"dialog": [[0, "hey"], [1, "hi, i paint"]], "personas": [["i swim."], ["i paint."]]}]))
    res = ingest([f"blended_skill_talk:{tmp_path / 'val.json'}"], **LOOSE)
    convs = _convs(res)
    assert convs["bst-val-0"] == [("user", "hi"), ("assistant", "hello, i fix cars"), ("user", "cool")]
    assert convs["bst-val-1"] == [("user", "hey"), ("assistant", "hi, i paint")]
    assert sorted(json.loads(f)[0] for f in res.personas["facts"]) == ["i am a mechanic.", "i paint."]


def test_convai2_eval_ratings_thumbs_and_bot_detection(tmp_path):
    dialogs = [
        {"dialog": [{"sender": "participant1", "text": "hi", "evaluation_score": None, "sender_class": "Human"},
                    {"sender": "participant2", "text": "hello! i like tea", "evaluation_score": 1,
                     "sender_class": "Bot"}],
         "bot_profile": ["i like tea."], "user_profile": ["i run."], "eval_score": 4, "profile_match": 1},
        {"dialog_id": "0xab", "dialog": [{"sender": "participant2", "text": "hey, i am a bot"},
                                         {"sender": "participant1", "text": "ok"}], "eval_score": None},
        {"dialog": [{"sender": "participant2", "text": "anyone there?"}], "eval_score": 1},
        {"dialog": [{"sender": "participant1", "text": "x"}], "eval_score": 9},
    ]
    (tmp_path / "export.json").write_text(json.dumps(dialogs))
    res = ingest([f"convai2_eval:{tmp_path}"], **LOOSE)
    t = res.turns.set_index(["conversation_id", "turn_index"])
    assert t.loc[("convai2-export-0", 1), "feedback_rating"] == 4 and t.loc[("convai2-export-0", 1), "feedback_thumb"] == 1
    assert pd.isna(t.loc[("convai2-export-0", 0), "feedback_rating"])
    assert t.loc[("convai2-export-0xab", 0), "role"] == "assistant"  # participant2 is the bot by convention
    assert res.stats["skipped"] == {"no human message": 1}
    assert "eval_score 9" in res.quarantine["detail"].iloc[0]
    assert len(res.personas) == 1 and t.loc[("convai2-export-0", 1), "persona_id"] == res.personas["persona_id"][0]
    assert ingest([f"convai2_eval:{tmp_path}?rated=1"], **LOOSE).stats["conversations"] == 1


def test_user_satisfaction_rates_the_preceding_system_turn(tmp_path):
    (tmp_path / "MWOZ.txt").write_text(
        "USER\tI need a cheap hotel.\tHotel-Inform\t3,3,4\n"
        "SYSTEM\tThe Lovell Lodge is cheap.\tHotel-Inform\t\n"
        "USER\tGreat, book it.\t\t5,4,5\n"
        "USER\tFor two nights.\t\t2,2,2\n"
        "SYSTEM\tDone.\t\t\n"
        "USER\tOVERALL\t\t4,4,4\n"
        "\n"
        "USER\tHi\t\t3,x,3\n")
    res = ingest([f"user_satisfaction:{tmp_path}"], **LOOSE)
    t = res.turns
    assert list(t["role"]) == ["user", "assistant", "user", "user", "assistant"]
    assert t["feedback_rating"].iloc[1] == pytest.approx(14 / 3) and t["feedback_rating"].isna().sum() == 4
    assert "bad satisfaction scores" in res.quarantine["detail"].iloc[0]


def test_goemotions_ekman_mapping_and_multi(tmp_path):
    (tmp_path / "labels.txt").write_text("admiration\nanger\nnervousness\nneutral\n")
    (tmp_path / "dev.tsv").write_text("So proud of you\t0\tc1\nGrr\t1,3\tc2\nHmm\t0,2\tc3\nbad line\n")
    res = ingest([f"goemotions:{tmp_path}?split=source"], **LOOSE)
    t = res.turns.set_index("conversation_id")
    assert t.loc["goemotions-c1", "emotion"] == "happy" and t.loc["goemotions-c2", "emotion"] == "angry"
    assert t.loc["goemotions-c2", "emotion_fine"] == "anger,neutral"
    assert set(t["split"]) == {"validation"} and set(t["role"]) == {"user"}
    assert len(res.quarantine) == 1
    res = ingest([f"goemotions:{tmp_path}?multi=skip"], **LOOSE)
    assert res.stats["skipped"] == {"several emotions (multi=skip)": 1}


# ------------------------------------------------------------------ generic options and processing

def _many(tmp_path, n=40, name="many.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps({"id": f"{name}-{i}", "messages": [
        {"role": "user", "content": f"Question {i}: what is {i} plus {i * 7} in the {i}th base?"},
        {"role": "assistant", "content": f"Answer {i} is {i * 8} and something unique {i * 13}"}]})
        for i in range(n)))
    return p


def test_cap_weight_min_turns(tmp_path):
    p = _many(tmp_path)
    assert ingest([f"jsonl:{p}?cap=5"], **LOOSE).stats["conversations"] == 5
    w = ingest([f"jsonl:{p}?weight=0.5"], **LOOSE)
    assert 10 <= w.stats["conversations"] <= 30 and w.stats["skipped"]["not sampled (weight)"] == 40 - w.stats["conversations"]
    assert ingest([f"jsonl:{p}?weight=0.5"], **LOOSE).turns.equals(w.turns)  # deterministic
    with pytest.raises(IngestError, match="no conversations") as info:
        ingest([f"jsonl:{p}?min_turns=3"], **LOOSE)
    assert info.value.result.stats["skipped"] == {"fewer than 3 turns (min_turns)": 40}
    with pytest.raises(IngestError, match="weight=2.0"):
        ingest([f"jsonl:{p}?weight=2"])


def test_several_sources_and_id_clash(tmp_path):
    a = _many(tmp_path, 6, "a.jsonl")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "a.jsonl-0", "messages": [
        {"role": "user", "content": "different text"}, {"role": "assistant", "content": "entirely"}]}))
    res = ingest([f"jsonl:{a}", f"jsonl:{tmp_path / 'b.jsonl'}", "chatterbot:english?cap=10"], seed=3)
    assert res.stats["per_source"][f"jsonl:{a}"]["conversations"] == 6
    assert "jsonl-a.jsonl-0~2" in set(res.turns["conversation_id"])
    assert res.turns.groupby("conversation_id")["source"].nunique().max() == 1
    assert list(res.turns.columns) == TURN_COLUMNS


def test_near_duplicates_removed_exact_variants_too(tmp_path):
    base = ["Hello, I would like to book a table for two people tonight at eight.",
            "Sure, which restaurant would you like to book the table at?",
            "The Italian place on Main Street, near the old cinema."]
    variants = [base, [b.upper() + "!!" for b in base],  # exact up to case and punctuation
                base[:2] + ["The Italian place on Main Street, near the old cinema please."],  # near
                ["A completely different chat about the weather today.", "Yes, it is sunny and warm outside."]]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                                    for i, t in enumerate(v)]}) for v in variants))
    res = ingest([f"jsonl:{p}"], **LOOSE)
    assert res.stats["duplicates_removed"] == 1 and res.stats["near_duplicates_removed"] == 1
    assert res.stats["conversations"] == 2
    assert ingest([f"jsonl:{p}"], near_duplicate_threshold=0, **LOOSE).stats["conversations"] == 3


def test_truncation_by_chars_and_tokens_is_flagged(tmp_path):
    p = tmp_path / "long.jsonl"
    long = " ".join(f"word{i}," for i in range(300))
    p.write_text(json.dumps({"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "ok"}]}))
    res = ingest([f"jsonl:{p}"], max_turn_chars=100, **LOOSE)
    assert res.turns["text"].str.len().iloc[0] <= 100 and list(res.turns["truncated"]) == [True, False]
    res = ingest([f"jsonl:{p}"], max_turn_tokens=10, **LOOSE)
    assert res.turns["text"].iloc[0] == "word0, word1, word2, word3, word4," and res.stats["truncated_turns"] == 1


def test_pii_kinds_are_configurable(tmp_path):
    p = tmp_path / "pii.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "mail a@b.com from 10.0.0.1"}]}))
    assert ingest([f"jsonl:{p}"], **LOOSE).turns["text"].iloc[0] == "mail [EMAIL] from [IP]"
    assert ingest([f"jsonl:{p}"], pii=["ip"], **LOOSE).turns["text"].iloc[0] == "mail a@b.com from [IP]"
    res = ingest([f"jsonl:{p}"], pii=[], **LOOSE)
    assert res.turns["text"].iloc[0] == "mail a@b.com from 10.0.0.1" and "pii_email" not in res.stats
    with pytest.raises(IngestError, match="unknown PII kinds"):
        ingest([f"jsonl:{p}"], pii=["ssn"])
