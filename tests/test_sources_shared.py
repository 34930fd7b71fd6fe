"""Source loaders on the real research data in ../shared/data (skipped with a reason when absent).

Each test reads a capped slice so the file stays fast (~10 s). The data sets
carry their own, partly non-commercial licences (see ../shared/data/README.md);
they are read in place, never copied. Run::

    python -m pytest tests/test_sources_shared.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convrl.data.ingest import ingest
from convrl.data.sources.labels import ACTS, EMOTIONS

pytestmark = pytest.mark.shared_data
# The same path as conftest.SHARED_DATA (conftest is not importable as a module here); conftest
# skips every test of this file, with the reason, when the folder is absent.
D = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOOSE = dict(quarantine_threshold=1.0)


def _alternates(turns) -> bool:
    t = turns[turns["role"] != "system"].sort_values(["conversation_id", "turn_index"])
    return all((g["role"].values[1:] != g["role"].values[:-1]).all() for _, g in t.groupby("conversation_id"))


def test_dailydialog_convlab_zip():
    res = ingest([f"dailydialog:{D}/dailydialog/convlab3_unified/data.zip?cap=300&split=source"])
    t = res.turns
    assert res.stats["conversations"] == 300 and res.stats["quarantined"] == 0
    assert t["emotion"].notna().all() and set(t["emotion"]) <= set(EMOTIONS) and "happy" in set(t["emotion"])
    assert t["act"].notna().all() and set(t["act"]) == set(ACTS)
    assert set(t["split"]) == {"train"}  # the zip lists its train dialogues first
    assert _alternates(t) and t["conversation_id"].str.startswith("dailydialog-train-").all()


def test_dailydialog_original_release_matches_convlab():
    zip_spec = f"dailydialog:{D}/dailydialog/convlab3_unified/data.zip?splits=validation&cap=100"
    orig_spec = f"dailydialog:{D}/dailydialog/original_ijcnlp/validation?cap=100"
    res = ingest([zip_spec, orig_spec], **LOOSE)
    orig = res.stats["per_source"][orig_spec]
    # The same dialogues in two releases (spacing differs): nearly all recognised as duplicates.
    assert orig["duplicates"] + orig["near_duplicates"] >= 95 and orig["quarantined"] == 0
    alone = ingest([orig_spec], **LOOSE).turns
    assert set(alone["emotion"]) <= set(EMOTIONS) and set(alone["act"]) <= set(ACTS)
    assert " ?" not in " ".join(alone["text"])  # detokenised


def test_empatheticdialogues_knowee():
    res = ingest([f"empatheticdialogues:{D}/empatheticdialogues/knowee_valid_test/parsed_raw_valid.json?cap=300"],
                 **LOOSE)
    t = res.turns
    first_user = t[(t["role"] == "user")].groupby("conversation_id").head(1)
    assert first_user["emotion"].notna().all() and set(first_user["emotion"]) <= set(EMOTIONS)
    assert first_user["emotion_fine"].nunique() >= 25  # the 32-way label survives the mapping
    assert (t.groupby("conversation_id")["role"].first() == "system").all()
    assert t[t["role"] == "system"]["text"].str.startswith("Situation: ").all()


def test_personachat_parlai_and_knowee_personas():
    res = ingest([f"personachat:{D}/personachat/valid_self_original_no_cands.txt?cap=100"])
    t, p = res.turns, res.personas
    assert res.stats["conversations"] == 100 and _alternates(t)
    assert t["persona_id"].notna().all() and set(t["persona_id"]) <= set(p["persona_id"])
    assert p["facts"].map(lambda f: 3 <= len(json.loads(f)) <= 5).all()
    res = ingest([f"personachat:{D}/personachat/knowee/valid_original.json?cap=50"])
    assert res.stats["conversations"] == 50 and len(res.personas) >= 45


def test_blended_skill_talk():
    res = ingest([f"blended_skill_talk:{D}/blended_skill_talk/val.json?cap=100"])
    assert res.stats["conversations"] == 100 and len(res.personas) >= 90
    assert res.turns["persona_id"].notna().all() and _alternates(res.turns)


def test_convai2_human_eval_feedback():
    res = ingest([f"convai2_eval:{D}/convai2_human_eval/data_volunteers.json"], **LOOSE)
    t = res.turns
    bot = t[t["role"] == "assistant"]
    assert bot["feedback_rating"].notna().sum() > 1000 and set(bot["feedback_rating"].dropna()) <= {1, 2, 3, 4, 5}
    assert t.loc[t["role"] == "user", ["feedback_rating", "feedback_thumb"]].isna().all().all()
    assert set(bot["feedback_thumb"].dropna()) == {0.0, 1.0}
    assert res.stats["skipped"]["no human message"] > 0 and res.stats["quarantined"] == 0
    assert len(res.personas) > 100


def test_user_satisfaction_sessions():
    res = ingest([f"user_satisfaction:{D}/user_satisfaction/MWOZ.txt?cap=200"])
    t = res.turns
    assert res.stats["conversations"] == 200
    assert t.loc[t["role"] == "user", "feedback_rating"].isna().all()
    rated = t.loc[t["role"] == "assistant", "feedback_rating"].dropna()
    assert len(rated) > 1000 and rated.between(1, 5).all()


def test_goemotions_ekman_and_original_agree():
    ek = ingest([f"goemotions:{D}/goemotions/ekman/dev.tsv?cap=500"]).turns.set_index("conversation_id")
    orig = ingest([f"goemotions:{D}/goemotions/original/dev.tsv?cap=500"]).turns.set_index("conversation_id")
    assert set(ek["emotion"]) == set(EMOTIONS) and (ek["role"] == "user").all()
    both = ek.join(orig, rsuffix="_orig", how="inner")
    single = ~both["emotion_fine_orig"].str.contains(",")
    # Mapping the 28 labels through the Ekman grouping agrees with the authors' Ekman files.
    agree = (both.loc[single, "emotion"] == both.loc[single, "emotion_orig"]).mean()
    assert agree > 0.99


def test_mixed_sources_pass_the_data_checks():
    from convrl.data.personas import load_personas, personas_table
    from convrl.data_checks.runner import run_checks

    res = ingest([f"dailydialog:{D}/dailydialog/convlab3_unified/data.zip?cap=60",
                  f"empatheticdialogues:{D}/empatheticdialogues/knowee_valid_test/parsed_raw_test.json?cap=60",
                  f"personachat:{D}/personachat/valid_self_original_no_cands.txt?cap=60",
                  f"convai2_eval:{D}/convai2_human_eval/data_intermediate.json?rated=1",
                  f"goemotions:{D}/goemotions/ekman/test.tsv?cap=60",
                  "chatterbot:english?cap=60"], seed=5)
    import pandas as pd

    personas = pd.concat([personas_table(load_personas(["empathetic_coach"])), res.personas], ignore_index=True)
    report = run_checks(res.turns, personas)
    assert report.success, report.to_markdown()
    assert res.turns.groupby("source")["split"].nunique().eq(3).all()  # stratified by source


def test_preference_pairs_from_convai2():
    from convrl.data.preferences import preference_pairs

    res = ingest([f"convai2_eval:{D}/convai2_human_eval"], **LOOSE)
    pairs = preference_pairs(res.turns, context_turns=1, with_metadata=True)
    assert len(pairs) > 200
    for p in pairs[:50]:
        assert p["prompt"][-1]["role"] == "user" and len(p["prompt"]) == 1
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        assert p["score_chosen"] - p["score_rejected"] >= 1
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]


def test_data_inspect_cli_on_dailydialog(capsys):
    from convrl.data_cli import main

    assert main(["inspect", f"dailydialog:{D}/dailydialog/convlab3_unified/data.zip?cap=200"]) == 0
    out = capsys.readouterr().out
    for part in ("Data card", "Conversations per split", "Turns per emotion", "happy", "Turn length in words",
                 "PII redacted", "200 conversations"):
        assert part in out
