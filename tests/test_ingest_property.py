"""Property: whatever is wrong with a file, every record either arrives whole or is quarantined with its reason.

Hypothesis generates conversations, corrupts some of them in known ways,
writes them as JSONL, ShareGPT JSON, CSV or Parquet, ingests the file and
checks the invariant ``arrived ∪ quarantined = every record`` exactly:

* a clean conversation arrives whole (every turn, in order) and is nowhere in
  the quarantine, unless it repeats an earlier kept one (then it is a
  ``duplicate`` naming that one);
* a corrupted conversation never reaches the turn table and has exactly one
  quarantine row, with the category its corruption calls for;
* PII planted in any turn (e-mails, card numbers, URL secrets) never arrives;
* blank lines sprinkled into JSONL and CSV files are counted, not lost unseen.

Run::

    python -m pytest tests/test_ingest_property.py -q
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convrl.data.ingest import IngestError, ingest

WORDS = ("garden tulip river window coffee bicycle museum winter lantern pepper violin harbor orange "
         "pillow rocket meadow candle thunder biscuit falcon mirror saddle velvet walnut glacier").split()
SECRETS = ("reach me at kim.lee{n}@example.org", "card 4111 1111 1111 1111", "token link "
           "https://api.example.com/v2/items?access_token=sk{n}Zq81xT", "signed https://s3.example.com/o?"
           "X-Amz-Signature=deadbeef{n}cafe&X-Amz-Date=20261202")
LEAKS = ("kim.lee", "4111 1111", "Zq81xT", "deadbeef")
FORMATS = ("jsonl", "sharegpt", "csv", "parquet")
# corruption -> the category it must be quarantined under; which formats can carry it
CORRUPTIONS = {
    "empty_text": ("empty_text", FORMATS),
    "unknown_role": ("unknown_role", FORMATS),
    "no_user": ("incomplete_conversation", FORMATS),
    "surrogate": ("encoding", ("jsonl", "sharegpt")),
    "wrong_type": ("invalid_type", ("jsonl", "sharegpt")),
    "turn_gap": ("turn_index_gap", ("csv", "parquet")),
    "extra_field": ("malformed_row", ("csv",)),
}


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 9))
    convs = []
    for i in range(n):
        k = draw(st.integers(1, 4))
        turns = []
        for j in range(k):
            words = draw(st.lists(st.sampled_from(WORDS), min_size=4, max_size=9))
            # conversation-specific words keep distinct conversations from being near-duplicates by chance
            # (only the planted secrets' words repeat across conversations)
            text = f"c{i}t{j} " + " ".join(f"{w}{i}" for w in words)
            if draw(st.integers(0, 5)) == 0:
                text += " " + draw(st.sampled_from(SECRETS)).format(n=i)
            turns.append({"role": "user" if j % 2 == 0 else "assistant", "text": text})
        convs.append({"id": f"c{i}", "turns": turns})
    fmt = draw(st.sampled_from(FORMATS))
    plan = {}
    for c in convs:
        allowed = [name for name, (_, fmts) in CORRUPTIONS.items() if fmt in fmts]
        plan[c["id"]] = draw(st.one_of(st.none(), st.sampled_from(allowed)))
    # an exact repeat (new id) of an earlier clean conversation, when there is one
    clean = [c for c in convs if plan[c["id"]] is None]
    if clean and draw(st.booleans()):
        src = draw(st.sampled_from(clean))
        convs.append({"id": f"dup{src['id']}", "turns": [dict(t) for t in src["turns"]], "copy_of": src["id"]})
        plan[convs[-1]["id"]] = None
    blanks = draw(st.lists(st.integers(0, len(convs)), max_size=3)) if fmt in ("jsonl", "csv") else []
    return fmt, convs, plan, blanks


def _corrupt(conv: dict, how: str | None, fmt: str, draw_pos: int) -> list[dict]:
    turns = [dict(t) for t in conv["turns"]]
    pos = draw_pos % len(turns)
    if how == "empty_text":
        turns[pos]["text"] = " \t "
    elif how == "unknown_role":
        turns[pos]["role"] = "wizard"
    elif how == "no_user":
        for t in turns:
            t["role"] = "assistant"
    elif how == "surrogate":
        turns[pos]["text"] += " \ud83d"
    elif how == "wrong_type":
        turns[pos]["text"] = 12345
    return turns


def _with_blanks(lines: list[str], blanks: list[int]) -> list[str]:
    for pos in sorted(blanks, reverse=True):
        lines.insert(min(pos, len(lines)), "")
    return lines


def _write(d: Path, fmt: str, convs: list[dict], plan: dict, blanks: list[int]) -> Path:
    if fmt in ("jsonl", "sharegpt"):
        role_key, text_key, key = (("role", "content", "messages") if fmt == "jsonl"
                                   else ("from", "value", "conversations"))
        lines = []
        for i, c in enumerate(convs):
            turns = _corrupt(c, plan[c["id"]], fmt, i)
            msgs = [{role_key: t["role"] if fmt == "jsonl" else {"user": "human", "assistant": "gpt"}.get(
                t["role"], t["role"]), text_key: t["text"]} for t in turns]
            lines.append(json.dumps({"id": c["id"], key: msgs}))  # ensure_ascii: a lone surrogate is "\ud83d"
        p = d / ("chats.jsonl" if fmt == "jsonl" else "chats.json")
        p.write_text("\n".join(_with_blanks(lines, blanks)) + "\n" if fmt == "jsonl"
                     else "[" + ",\n".join(lines) + "]")
        return p
    rows = []
    for i, c in enumerate(convs):
        turns = _corrupt(c, plan[c["id"]], fmt, i)
        idx = list(range(len(turns)))
        if plan[c["id"]] == "turn_gap":
            idx = [v + 1 if v >= 1 else v for v in idx] if len(idx) > 1 else [2]
        for j, t in enumerate(turns):
            rows.append({"conversation_id": c["id"], "turn_index": idx[j], "role": t["role"], "text": t["text"],
                         "extra": plan[c["id"]] == "extra_field" and j == i % len(turns)})
    if fmt == "parquet":
        p = d / "turns.parquet"
        pd.DataFrame(rows).drop(columns="extra").to_parquet(p)
        return p
    p = d / "turns.csv"
    lines = [f"{r['conversation_id']},{r['turn_index']},{r['role']},\"{r['text'].replace(chr(34), chr(34) * 2)}\""
             + (",spill" if r["extra"] else "") for r in rows]
    p.write_text("conversation_id,turn_index,role,text\n" + "\n".join(_with_blanks(lines, blanks)) + "\n")
    return p


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_every_record_arrives_whole_or_is_quarantined_with_its_reason(case):
    fmt, convs, plan, blanks = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), fmt, convs, plan, blanks)
        spec = f"{'parquet' if fmt == 'parquet' else 'csv' if fmt == 'csv' else 'jsonl'}:{path}"
        try:
            res = ingest([spec], quarantine_threshold=1.0, val_fraction=0, test_fraction=0)
        except IngestError as exc:  # nothing usable: the quarantine comes with the error
            res = exc.result
    prefix = {"jsonl": "jsonl-", "sharegpt": "sharegpt-", "csv": "turns-", "parquet": "turns-"}[fmt]
    arrived = res.turns.groupby("conversation_id")["text"].apply(list).to_dict()
    qt = res.quarantine
    quarantined = qt.groupby("conversation_id")["category"].apply(list).to_dict()
    # every quarantine row belongs to a generated record: nothing else is in the table
    assert qt["conversation_id"].notna().all(), qt.to_dict("records")
    expected_ids = {prefix + c["id"] for c in convs}
    assert set(arrived) | set(quarantined) == expected_ids
    assert not set(arrived) & set(quarantined)
    for c in convs:
        cid, how = prefix + c["id"], plan[c["id"]]
        if how is None and "copy_of" not in c:
            assert cid in arrived, (cid, quarantined.get(cid), qt.to_dict("records"))
            assert len(arrived[cid]) == len(c["turns"])  # whole, nothing dropped
            assert [t.split(" ", 1)[0] for t in arrived[cid]] == [t["text"].split(" ", 1)[0] for t in c["turns"]]
        elif how is None:
            assert quarantined[cid] == ["duplicate"]
            assert qt.loc[qt["conversation_id"] == cid, "duplicate_of"].item() == prefix + c["copy_of"]
        else:
            assert quarantined.get(cid) == [CORRUPTIONS[how][0]], (cid, how, qt.to_dict("records"))
    assert res.stats["skipped"].get("blank line", 0) == len(blanks)
    text = "\n".join(res.turns["text"])
    for leak in LEAKS:
        assert leak not in text
