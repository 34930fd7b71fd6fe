"""Issue 14's cases, one test each: nothing lost, nothing bad let in, every decision on record.

The rule everywhere: the unit of quarantine is the conversation; each
quarantine row has a category (``convrl.data.schema.Reason``), a detail naming
the bad message or row, and a location. Run::

    python -m pytest tests/test_ingest_rules.py -q
"""

from __future__ import annotations

import codecs
import json

import pandas as pd
import pytest

from convrl.data.card import build_card, render_card
from convrl.data.ingest import IngestError, ingest
from convrl.data.pii import redact_pii
from convrl.data.schema import QUARANTINE_COLUMNS, REASON_HELP, Reason

LOOSE = dict(quarantine_threshold=1.0, val_fraction=0, test_fraction=0)


def _run(*specs, **kw):
    return ingest(list(specs), **{**LOOSE, **kw})


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def _good(i: int) -> dict:
    return {"id": f"g{i}", "messages": _msgs(("user", f"Question {i} about planting tulips in autumn?"),
                                             ("assistant", f"Answer {i}: plant them {i} cm deep before frost."))}


def _rows(cid: str, *turns, **extra) -> list[dict]:
    return [{"conversation_id": cid, "role": r, "text": t, **{k: v[i] for k, v in extra.items()}}
            for i, (r, t) in enumerate(turns)]


def _csv(tmp_path, body: str):
    """Ingest a CSV file ``t.csv`` with the canonical header and ``body`` as its rows."""
    (tmp_path / "t.csv").write_text("conversation_id,role,text\n" + body)
    return _run(f"csv:{tmp_path / 't.csv'}")


def _only(res, category: str) -> pd.Series:
    qt = res.quarantine
    assert list(qt["category"]) == [category], qt[["location", "category", "detail"]].to_dict("records")
    return qt.iloc[0]


def test_reason_categories_are_documented():
    assert set(REASON_HELP) == set(Reason)
    for name in ("invalid_json", "not_an_object", "missing_field", "invalid_type", "unknown_role", "empty_text",
                 "empty_conversation", "encoding", "oversize", "format_mismatch", "unreadable_file",
                 "malformed_row", "turn_index_gap", "incomplete_conversation", "duplicate"):
        assert Reason(name).help
    assert {"category", "detail", "location"} <= set(QUARANTINE_COLUMNS)


# ------------------------------------------------------------------ 1. empty messages: the conversation goes whole

@pytest.mark.parametrize("text", ["", "   ", "\u200b\t"])
def test_empty_message_quarantines_the_jsonl_and_sharegpt_conversation(tmp_path, text):
    p = tmp_path / "c.jsonl"
    bad = {"id": "bad", "messages": _msgs(("user", "hello there"), ("assistant", text), ("assistant", "anyone?"))}
    sg = {"id": "sg", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": text},
                                        {"from": "human", "value": "still there?"}]}
    p.write_text("\n".join(json.dumps(x) for x in (_good(1), bad, sg)) + "\n")
    res = _run(f"jsonl:{p}")
    assert set(res.turns["conversation_id"]) == {"jsonl-g1"}
    qt = res.quarantine.set_index("conversation_id")
    assert list(qt["category"]) == ["empty_text", "empty_text"]
    assert "message 1 (assistant)" in qt.loc["jsonl-bad", "detail"] and qt.loc["jsonl-bad", "location"] == "c.jsonl:2"
    assert "message 1 (assistant)" in qt.loc["sharegpt-sg", "detail"]
    assert "empty_turns_dropped" not in res.stats and "empty_turns_dropped" not in build_card(res)["totals"]


def test_empty_csv_and_parquet_cells_quarantine_their_conversation(tmp_path):
    (tmp_path / "t.csv").write_text('conversation_id,role,text\na,user,Hi there\na,assistant,"   "\na,user,hello?\n'
                                    "b,user,Good morning\nb,assistant,\nc,user,Any news?\nc,assistant,None yet.\n")
    pd.DataFrame(_rows("p", ("user", "Hi"), ("assistant", "  "), ("user", "hm?"))
                 + _rows("q", ("user", "Is it cold?"), ("assistant", "N/A"))).to_parquet(tmp_path / "t.parquet")
    res = _run(f"csv:{tmp_path / 't.csv'}", f"parquet:{tmp_path / 't.parquet'}")
    assert sorted(set(res.turns["conversation_id"])) == ["t-c", "t-q"]  # "N/A" is text, kept
    qt = res.quarantine.set_index("conversation_id")
    assert sorted(qt.index) == ["t-a", "t-b", "t-p"] and set(qt["category"]) == {"empty_text"}
    assert qt.loc["t-a", "location"] == "t.csv:2-4" and qt.loc["t-a", "detail"].startswith("t.csv:3 (assistant) is")
    assert qt.loc["t-b", "detail"].startswith("t.csv:6 (assistant) is empty")
    assert qt.loc["t-p", "location"] == "t.parquet:row 0-2"


# ------------------------------------------------------------------ 2. a CSV row with too many fields

def test_csv_row_with_too_many_fields_takes_its_conversation_along(tmp_path):
    res = _csv(tmp_path, "x,user,Where is it?\ny,user,Hi\nx,assistant,Over there, left\ny,assistant,Hello!\n"
                         "x,user,Thanks\n")
    assert set(res.turns["conversation_id"]) == {"t-y"}
    row = _only(res, "malformed_row")
    assert row["location"] == "t.csv:2,4,6" and row["conversation_id"] == "t-x"
    assert row["detail"].startswith("t.csv:4: row has 4 fields, the header has 3")


# ------------------------------------------------------------------ 3. turn_index gaps and non-integers

@pytest.mark.parametrize("order,category", [
    ([0, 1, 3, 4], "turn_index_gap"), ([0, 2, 3], "turn_index_gap"), ([0, 1, 2, 4], "turn_index_gap"),
    ([3, 4, 5], "turn_index_gap"), ([0, 1, 1], "turn_index_gap"), ([0, 1.5, 2], "invalid_type"),
    (["0", "x", "2"], "invalid_type")])
def test_turn_index_gaps_and_non_integers_are_quarantined(tmp_path, order, category):
    roles = ["user", "assistant"] * 3
    rows = [{"conversation_id": "a", "turn_index": v, "role": roles[i], "text": f"turn number {i}"}
            for i, v in enumerate(order)]
    good = pd.DataFrame(_rows("b", ("user", "fine one"), ("assistant", "fine two")))
    good["turn_index"] = [0, 1]
    pd.concat([pd.DataFrame(rows), good]).to_csv(tmp_path / "t.csv", index=False)
    res = _run(f"csv:{tmp_path / 't.csv'}")
    assert set(res.turns["conversation_id"]) == {"t-b"}
    row = _only(res, category)
    assert row["conversation_id"] == "t-a" and "turn ind" in row["detail"]


def test_integer_floats_and_shuffled_interleaved_rows_are_fine(tmp_path):
    rows = [("a", 2.0, "user", "third"), ("b", 1.0, "assistant", "b two"), ("a", 0.0, "user", "first"),
            ("b", 0.0, "user", "b one"), ("a", 1.0, "assistant", "second")]
    pd.DataFrame(rows, columns=["conversation_id", "turn_index", "role", "text"]).to_parquet(tmp_path / "t.parquet")
    res = _run(f"parquet:{tmp_path / 't.parquet'}")
    assert len(res.quarantine) == 0
    got = res.turns.groupby("conversation_id")["text"].apply(list).to_dict()
    assert got == {"t-a": ["first", "second", "third"], "t-b": ["b one", "b two"]}
    # 1-based numbering is a numbering, not a gap
    pd.DataFrame([("c", 1, "user", "one"), ("c", 2, "assistant", "two")],
                 columns=["conversation_id", "turn_index", "role", "text"]).to_csv(tmp_path / "one.csv", index=False)
    assert list(_run(f"csv:{tmp_path / 'one.csv'}").turns["text"]) == ["one", "two"]


# ------------------------------------------------------------------ 4. lone surrogates

def test_escaped_lone_surrogate_is_an_encoding_error(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(_good(1)) + '\n{"id": "s", "messages": [{"role": "user", "content": "smile \\ud83d"}]}\n')
    res = _run(f"jsonl:{p}")
    row = _only(res, "encoding")
    assert "U+D83D" in row["detail"] and row["location"] == "c.jsonl:2"
    res.quarantine.to_parquet(tmp_path / "q.parquet")  # storable: the surrogate is escaped in raw


# ------------------------------------------------------------------ 5. blank lines

def test_blank_jsonl_lines_are_counted(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(_good(1)) + "\n\n   \n" + json.dumps(_good(2)) + "\n")
    res = _run(f"jsonl:{p}")
    assert res.stats["conversations"] == 2 and len(res.quarantine) == 0
    assert res.stats["skipped"] == {"blank line": 2} and res.stats["per_source"][f"jsonl:{p}"]["skipped"] == 2
    res = _csv(tmp_path, "\na,user,hi there\n,,\na,assistant,hello\n")
    assert res.stats["turns"] == 2 and res.stats["skipped"] == {"blank line": 2} and len(res.quarantine) == 0


# ------------------------------------------------------------------ 6. wrong JSON types

@pytest.mark.parametrize("record,category,words", [
    ({"messages": {"role": "user", "content": "hi"}}, "invalid_type", "'messages' is a JSON object"),
    ({"messages": "hi"}, "invalid_type", "'messages' is a JSON string"),
    ({"conversations": None}, "invalid_type", "'conversations' is a JSON null"),
    ({"messages": [{"role": "user", "content": 5}]}, "invalid_type", "'content' is a JSON number"),
    ({"messages": ["hi"]}, "invalid_type", "message 0 is a JSON string"),
    ({"messages": [{"role": 1, "content": "hi"}]}, "invalid_type", "'role' is a JSON number"),
    (None, "not_an_object", "record is a JSON null"),
    ({"messages": []}, "empty_conversation", "empty array")])
def test_wrong_json_types_say_so_in_json_terms(tmp_path, record, category, words):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(_good(1)) + "\n" + json.dumps(record) + "\n")
    row = _only(_run(f"jsonl:{p}"), category)
    assert words in row["detail"] and "NoneType" not in row["detail"] and "dict" not in row["detail"]


# ------------------------------------------------------------------ 7. UTF-16/32 with a byte-order mark

@pytest.mark.parametrize("codec,bom", [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                       ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-8", codecs.BOM_UTF8)])
def test_files_with_a_byte_order_mark_are_decoded_by_it(tmp_path, codec, bom):
    lines = "\r\n".join(json.dumps(_good(i), ensure_ascii=False) for i in range(3)).replace("Question 1", "Qüestion 1")
    (tmp_path / "c.jsonl").write_bytes(bom + lines.encode(codec))
    csv_text = "conversation_id,role,text\na,user,Grüße\na,assistant,Hallo\n"
    (tmp_path / "t.csv").write_bytes(bom + csv_text.encode(codec))
    res = _run(f"dir:{tmp_path}")
    assert len(res.quarantine) == 0 and res.stats["conversations"] == 4
    assert "Qüestion 1 about planting tulips in autumn?" in set(res.turns["text"]) and "Grüße" in set(res.turns["text"])


def test_utf16_without_bom_reads_with_the_encoding_option_and_a_broken_file_is_refused_whole(tmp_path):
    lines = "\n".join(json.dumps(_good(i)) for i in range(3)).encode("utf-16-le")
    (tmp_path / "nobom.jsonl").write_bytes(lines)
    assert _run(f"jsonl:{tmp_path / 'nobom.jsonl'}?encoding=utf-16-le").stats["conversations"] == 3
    broken = codecs.BOM_UTF16_LE + lines + "\n".encode("utf-16-le") + b"\x00\xd8" + "x\n".encode("utf-16-le")
    (tmp_path / "broken.jsonl").write_bytes(broken)  # an unpaired high surrogate after three good lines
    with pytest.raises(IngestError, match="no usable") as info:
        _run(f"jsonl:{tmp_path / 'broken.jsonl'}")
    qt = info.value.result.quarantine
    assert list(qt["category"]) == ["encoding"] and qt["location"].iloc[0] == "broken.jsonl"
    assert "nothing of it was loaded" in qt["detail"].iloc[0]


# ------------------------------------------------------------------ 8. duplicates on record; validity first

def test_duplicates_name_the_kept_record_and_bad_records_are_not_duplicates(tmp_path):
    p = tmp_path / "c.jsonl"
    dup = {**_good(1), "id": "copy"}
    near = {"id": "near", "messages": _good(1)["messages"] + [{"role": "user", "content": "ok"}]}
    bad = {"id": "bad", "messages": _good(2)["messages"] + [{"role": "assistant", "content": " "}]}
    p.write_text("\n".join(json.dumps(x) for x in (_good(1), _good(2), dup, near, bad)) + "\n")
    res = _run(f"jsonl:{p}", near_duplicate_threshold=0.7)
    assert set(res.turns["conversation_id"]) == {"jsonl-g1", "jsonl-g2"}
    qt = res.quarantine.set_index("conversation_id")
    assert qt.loc["jsonl-copy", "category"] == "duplicate" and qt.loc["jsonl-copy", "duplicate_of"] == "jsonl-g1"
    assert qt.loc["jsonl-near", "category"] == "duplicate" and qt.loc["jsonl-near", "duplicate_of"] == "jsonl-g1"
    assert "near-duplicate of jsonl-g1" in qt.loc["jsonl-near", "detail"]
    assert qt.loc["jsonl-bad", "category"] == "empty_text"  # not removed as a near-duplicate of g2
    assert res.stats["quarantined"] == 1 and res.stats["duplicates_removed"] == 1
    assert res.stats["near_duplicates_removed"] == 1


# ------------------------------------------------------------------ 9. PII through every source

SECRETS = ["https://api.example.com/v1?access_token=ya29.A0ARrdaM-secret",
           "https://bucket.s3.amazonaws.com/f.zip?X-Amz-Credential=AKIA%2F20261202&X-Amz-Signature=3f1c9be7a1",
           "see https://x.io/cb?code=4/0AX4XfWh&state=ok", "mail jo.doe@example.com", "card 4111 1111 1111 1111"]


def test_url_secrets_are_redacted_from_every_source(tmp_path):
    texts = [f"my link {s} thanks" for s in SECRETS]
    rows = [r for i, t in enumerate(texts) for r in _rows(f"c{i}", ("user", t), ("assistant", f"noted {i}"))]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"messages": _msgs(("user", t), ("assistant", "ok"))})
                                                for t in texts))
    res = _run(f"csv:{tmp_path / 't.csv'}", f"parquet:{tmp_path / 't.parquet'}", f"jsonl:{tmp_path / 't.jsonl'}",
               near_duplicate_threshold=0)
    joined = "\n".join(res.turns["text"])
    for leak in ("ya29", "3f1c9be7a1", "AKIA", "0AX4XfWh", "jo.doe", "4111"):
        assert leak not in joined, leak
    assert "state=ok" in joined and "access_token=[SECRET]" in joined


def test_card_look_alikes_stay_verbatim_and_cards_are_luhn_checked():
    assert redact_pii("order 123456789012345 shipped") == "order 123456789012345 shipped"
    assert redact_pii("ref 1234 5678 9012 345") == "ref 1234 5678 9012 345"
    assert redact_pii("pay 378282246310005 now") == "pay [CARD] now"  # a Luhn-valid 15-digit Amex
    assert redact_pii("call +1 415 555 0199") == "call [PHONE]"
    assert redact_pii("https://x.io/?design=blue&monkey=1") == "https://x.io/?design=blue&monkey=1"


def test_quarantine_excerpts_are_redacted_too(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"messages": _msgs(("robot", "write to jo.doe@example.com"))}) + "\n"
                 + json.dumps(_good(1)) + "\n")
    qt = _run(f"jsonl:{p}").quarantine
    assert "jo.doe" not in qt["raw"].iloc[0] and "[EMAIL]" in qt["raw"].iloc[0]


# ------------------------------------------------------------------ 10. nothing usable, empty files, wrong format

def test_nothing_usable_still_writes_the_quarantine_table(tmp_path, capsys):
    from convrl.data_cli import main

    p = tmp_path / "bad.jsonl"
    p.write_text('{"messages": "nope"}\n{oops\n')
    assert main(["ingest", f"jsonl:{p}", "--out", str(tmp_path / "o")]) == 2
    qt = pd.read_parquet(tmp_path / "o" / "quarantine.parquet")
    assert sorted(qt["category"]) == ["invalid_json", "invalid_type"]
    assert "no usable conversations" in capsys.readouterr().err
    assert main(["inspect", f"jsonl:{p}"]) == 2
    assert "invalid_type" in capsys.readouterr().out  # the card still shows why


def test_an_empty_file_is_a_warning_not_an_error(tmp_path, capsys):
    from convrl.data_cli import main

    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert main(["ingest", f"jsonl:{tmp_path / 'empty.jsonl'}", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "empty.jsonl is empty (0 bytes)" in err
    assert len(pd.read_parquet(tmp_path / "o" / "turns.parquet")) == 0
    with pytest.raises(IngestError, match="empty.jsonl is empty"):  # the library default stays strict
        ingest([f"jsonl:{tmp_path / 'empty.jsonl'}"])


def test_jsonl_named_csv_is_a_format_mismatch(tmp_path):
    (tmp_path / "chats.csv").write_text(json.dumps(_good(1)) + "\n")
    (tmp_path / "ok.jsonl").write_text(json.dumps(_good(2)) + "\n")
    row = _only(_run(f"dir:{tmp_path}"), "format_mismatch")
    assert row["location"] == "chats.csv" and "not CSV" in row["detail"] and "jsonl:PATH" in row["detail"]
    assert '"content"' not in row["detail"]  # no JSON fragments passed off as column names


# ------------------------------------------------------------------ 11. the card groups by category

def test_card_groups_the_quarantine_by_category(tmp_path):
    card = build_card(_csv(tmp_path, "".join(f"conv-{i},user,Hello {i}\nconv-{i},wizard,Hi\n" for i in range(3))
                           + "ok,user,Fine\nok,assistant,Good\n"))
    assert card["quarantine_categories"] == {"unknown_role": 3}
    assert "unknown role 'wizard'" in card["quarantine_examples"]["unknown_role"]
    text = render_card(card)
    assert "unknown_role" in text and "conversation 'conv-" not in text


def test_pii_counts_only_what_arrives(tmp_path):
    p = tmp_path / "c.jsonl"
    mail = {"id": "m", "messages": _msgs(("user", "write to kim@example.org about the tulips"), ("assistant", "ok"))}
    bad = {"id": "b", "messages": _msgs(("user", "and ann@example.org?"), ("assistant", " "))}
    p.write_text("\n".join(json.dumps(x) for x in (mail, {**mail, "id": "m2"}, bad)) + "\n")
    res = _run(f"jsonl:{p}")
    assert res.stats["pii_email"] == 1 and build_card(res)["pii_redacted"] == {"email": 1}


def test_bad_csv_quoting_quarantines_its_conversation_and_says_which_lines(tmp_path):
    res = _csv(tmp_path, 'a,user,Hello there\nb,user,fine\na,assistant,"quoted" then text\nb,assistant,also fine\n'
                         'c,user,"never closed\nd,user,swallowed\nd,assistant,too\n')
    assert set(res.turns["conversation_id"]) == {"t-b"}
    qt = res.quarantine.set_index("conversation_id")
    assert list(qt["category"]) == ["malformed_row", "malformed_row"]
    assert qt.loc["t-a", "location"] == "t.csv:2,4" and "t.csv:4: unreadable CSV row" in qt.loc["t-a", "detail"]
    # the unclosed quote swallowed d's rows: they lie in the quarantined row's line range, not lost unseen
    assert qt.loc["t-c", "location"] == "t.csv:6-8" and "lines 6-8" in qt.loc["t-c", "detail"]
    assert "swallowed" in qt.loc["t-c", "raw"]
