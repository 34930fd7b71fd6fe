import json

import pandas as pd
import pytest

from convrl.data.ingest import IngestError, assign_splits, clean_text, ingest, redact_pii
from convrl.data.schema import TURN_COLUMNS


def test_chatterbot_ingest_is_canonical(ingested):
    t = ingested.turns
    assert list(t.columns) == TURN_COLUMNS
    assert set(t["role"]) <= {"user", "assistant"}
    assert (t["text"].str.len() > 0).all()
    assert set(t["split"]) == {"train", "validation", "test"}
    # no conversation in two splits
    assert (t.groupby("conversation_id")["split"].nunique() == 1).all()
    # contiguous turn indices
    for _, g in t.groupby("conversation_id"):
        assert list(g["turn_index"]) == list(range(len(g)))


def test_split_is_deterministic_and_stratified():
    ids = pd.Series([f"a{i}" for i in range(50)] + [f"b{i}" for i in range(10)])
    src = pd.Series(["A"] * 50 + ["B"] * 10)
    s1 = assign_splits(ids, src, 0.1, 0.2, seed=1)
    assert s1 == assign_splits(ids, src, 0.1, 0.2, seed=1)
    b = [s1[f"b{i}"] for i in range(10)]
    assert b.count("test") == 2 and b.count("validation") == 1


def test_pii_redaction_counts():
    counts = {}
    text = ("mail me at jo.doe@example.com or call +1 415 555 0199, card 4111 1111 1111 1111, "
            "not 1234 5678 9012 3456, host 10.0.0.12, see https://x.io/a?token=abc123&x=1")
    out = redact_pii(text, counts)
    assert "[EMAIL]" in out and "[PHONE]" in out and "[CARD]" in out and "[IP]" in out
    assert "token=[SECRET]" in out
    assert "1234 5678 9012 3456" in out  # fails the Luhn check: not a card
    assert counts["email"] == 1 and counts["credit_card"] == 1


def test_clean_text_normalises():
    assert clean_text("  ﬁne\u00a0 \u200bday \x07 ") == "fine day"


def test_jsonl_bad_rows_are_quarantined(tmp_path):
    p = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": []}),
             json.dumps({"messages": [{"role": "robot", "content": "x"}]})]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe bad bytes\n")
    res = ingest([f"jsonl:{p}"], quarantine_threshold=1.0, val_fraction=0.0001, test_fraction=0.0001)
    assert res.stats["conversations"] == 1
    reasons = " | ".join(res.quarantine["detail"])
    assert "malformed JSON" in reasons and "unknown role" in reasons and "UTF-8" in reasons and "messages" in reasons
    assert sorted(res.quarantine["category"]) == ["empty_conversation", "encoding", "invalid_json", "unknown_role"]


def test_quarantine_threshold_fails_the_run(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text("{oops\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(IngestError, match="quarantined"):
        ingest([f"jsonl:{p}"], quarantine_threshold=0.05)


def test_unknown_source_kind():
    with pytest.raises(IngestError, match="unknown source kind"):
        ingest(["ftp:somewhere"])
