"""A folder of broken files: every bad row is quarantined with a category and reason, every good row arrives.

The folder mixes formats read by ``dir:`` (by extension) and holds, besides
good conversations: malformed JSON lines, a wrong encoding, missing fields,
unknown roles, empty conversations, files whose content does not match their
extension, and one enormous line. Run::

    python -m pytest tests/test_ingest_bad_input.py -q
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from convrl.data.ingest import IngestError, ingest

MAX_LINE = 50_000  # the enormous line is 4x this; the option keeps the test fast


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def _good(i: int) -> dict:
    return {"id": f"good-{i}", "messages": _msgs(("user", f"Good question number {i} about gardens?"),
                                                 ("assistant", f"Good answer number {i}: plant tulips {i} cm deep."))}


@pytest.fixture
def broken_dir(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    expected_bad: dict[str, tuple[str, str]] = {}  # location -> (category, a word the detail must contain)

    lines = [json.dumps(_good(1)),
             '{"messages": [{"role": "user", "content": "unterminated',                      # 2 malformed JSON
             json.dumps({"messages": _msgs(("robot", "beep"), ("user", "hi"))}),            # 3 unknown role
             json.dumps({"messages": [{"role": "user"}]}),                                  # 4 missing content
             json.dumps({"messages": []}),                                                  # 5 empty conversation
             json.dumps({"text": "no messages at all"}),                                    # 6 missing field
             json.dumps({"messages": _msgs(("user", "   "), ("assistant", "\u200b"))}),     # 7 only blank turns
             json.dumps({"messages": _msgs(("assistant", "talking to myself"))}),           # 8 no user turn
             json.dumps({"id": "huge", "messages": _msgs(("user", "x" * (4 * MAX_LINE)))}),  # 9 enormous line
             json.dumps(_good(2)),
             "[1, 2, 3]"]                                                                    # 11 not an object
    (d / "chats.jsonl").write_text("\n".join(lines) + "\n")
    expected_bad.update({"chats.jsonl:2": ("invalid_json", "malformed JSON"),
                         "chats.jsonl:3": ("unknown_role", "unknown role"),
                         "chats.jsonl:4": ("missing_field", "content"),
                         "chats.jsonl:5": ("empty_conversation", "empty"),
                         "chats.jsonl:6": ("missing_field", "messages"),
                         "chats.jsonl:7": ("empty_text", "message 0 (user) is whitespace-only"),
                         "chats.jsonl:8": ("incomplete_conversation", "no user turn"),
                         "chats.jsonl:9": ("oversize", "exceeds"),
                         "chats.jsonl:11": ("not_an_object", "not an object")})

    # Wrong encoding: cp1252 bytes in a UTF-8 file (one bad line between good ones).
    bad_enc = json.dumps({"messages": _msgs(("user", "caf\u00e9 cr\u00e8me"))}, ensure_ascii=False).encode("cp1252")
    (d / "mixed_encoding.jsonl").write_bytes(json.dumps(_good(3)).encode() + b"\n" + bad_enc + b"\n"
                                             + json.dumps(_good(4)).encode() + b"\n")
    expected_bad["mixed_encoding.jsonl:2"] = ("encoding", "UTF-8")

    # ShareGPT as one JSON list, one record broken.
    (d / "sharegpt.json").write_text(json.dumps([
        {"id": "sg-ok", "conversations": [{"from": "human", "value": "Is a tomato a fruit?"},
                                          {"from": "gpt", "value": "Botanically, yes."}]},
        {"id": "sg-bad", "conversations": [{"from": "narrator", "value": "Once upon a time"}]}]))
    expected_bad["sharegpt.json:record 1"] = ("unknown_role", "unknown role")

    # A JSON file that is not valid JSON at all: one row for the file.
    (d / "truncated.json").write_text('[{"messages": [{"role": "user", "content": "hi"}]')
    expected_bad["truncated.json:1"] = ("invalid_json", "malformed JSON file")

    # CSV turn rows: a good conversation, a bad role, a short row, a row without an id.
    (d / "turns.csv").write_text("conversation_id,role,text\n"
                                 "csv-ok,user,Where is the station?\n"
                                 "csv-ok,assistant,Two blocks north.\n"
                                 "csv-bad,user,hello\n"
                                 "csv-bad,wizard,abracadabra\n"
                                 "csv-ok2,user\n"
                                 ",user,who am I\n"
                                 "csv-ok3,user,Thanks for the help today\n"
                                 "csv-ok3,assistant,You are welcome any time\n")
    expected_bad.update({"turns.csv:4-5": ("unknown_role", "turns.csv:5: unknown role 'wizard'"),
                         "turns.csv:6": ("malformed_row", "fields"),
                         "turns.csv:7": ("missing_field", "no conversation id")})

    # Content that does not match the extension.
    pd.DataFrame({"conversation_id": ["p"], "role": ["user"], "text": ["hi"]}).to_parquet(d / "really_parquet.jsonl")
    expected_bad["really_parquet.jsonl"] = ("format_mismatch", "Parquet")
    (d / "not_parquet.parquet").write_text("conversation_id,role,text\nx,user,hi\n")
    expected_bad["not_parquet.parquet"] = ("format_mismatch", "not Parquet")
    (d / "notes.txt").write_text("just some notes")
    expected_bad["notes.txt"] = ("unsupported_file", "unsupported file type")

    # A good Parquet file and an empty JSONL file (nothing in, nothing out: a counted skip with a warning).
    pd.DataFrame({"conversation_id": ["pq", "pq"], "role": ["user", "assistant"],
                  "text": ["Any tips for sourdough?", "Feed the starter daily."]}).to_parquet(d / "good.parquet")
    (d / "empty.jsonl").write_text("")
    good = {"jsonl-good-1", "jsonl-good-2", "jsonl-good-3", "jsonl-good-4", "sharegpt-sg-ok", "turns-csv-ok",
            "turns-csv-ok3", "good-pq"}
    return d, expected_bad, good


def test_every_bad_row_quarantined_every_good_row_arrives(broken_dir):
    d, expected_bad, good = broken_dir
    res = ingest([f"dir:{d}?max_line_bytes={MAX_LINE}"], quarantine_threshold=1.0, val_fraction=0, test_fraction=0)
    assert set(res.turns["conversation_id"]) == good
    # each good conversation arrives whole
    assert res.turns.groupby("conversation_id").size().to_dict() == {cid: 2 for cid in good}
    qt = res.quarantine
    assert (qt["detail"].str.len() > 0).all() and (qt["source"] == f"dir:{d}?max_line_bytes={MAX_LINE}").all()
    by_loc = {loc: (cat, detail) for loc, cat, detail in zip(qt["location"], qt["category"], qt["detail"])}
    for loc, (category, word) in expected_bad.items():
        assert loc in by_loc, f"{loc} was not quarantined; quarantine: {by_loc}"
        assert by_loc[loc][0] == category, f"{loc}: category {by_loc[loc][0]!r}, expected {category!r}"
        assert word.lower() in by_loc[loc][1].lower(), f"{loc}: detail {by_loc[loc][1]!r} lacks {word!r}"
    # one quarantine row per bad record: nothing extra, nothing twice
    assert len(qt) == len(expected_bad), sorted(by_loc)
    # the enormous line is kept as a short excerpt, not whole
    assert qt["raw"].str.len().max() <= 500
    # the empty file is a counted skip with a warning, not an error and not silence
    assert res.stats["skipped"]["empty file"] == 1 and any("empty.jsonl" in w for w in res.stats["warnings"])


def test_threshold_fails_but_keeps_the_quarantine(broken_dir):
    d, expected_bad, _ = broken_dir
    with pytest.raises(IngestError, match="quarantined") as info:
        ingest([f"dir:{d}?max_line_bytes={MAX_LINE}"])  # default threshold 5%
    assert len(info.value.result.quarantine) == len(expected_bad)


def test_enormous_line_default_limit(tmp_path):
    from convrl.data.sources import base

    p = tmp_path / "big.jsonl"
    p.write_bytes(b'{"messages": "' + b"y" * (base.MAX_LINE_BYTES + 10) + b'"}\n'
                  + json.dumps(_good(5)).encode() + b"\n")
    res = ingest([f"jsonl:{p}"], quarantine_threshold=1.0, val_fraction=0, test_fraction=0)
    assert res.stats["conversations"] == 1 and "exceeds" in res.quarantine["detail"].iloc[0]
    assert list(res.quarantine["category"]) == ["oversize"] and res.quarantine["location"].iloc[0] == "big.jsonl:1"


def test_encoding_option_reads_legacy_files(tmp_path):
    p = tmp_path / "legacy.csv"
    p.write_bytes("conversation_id,role,text\nc,user,caf\u00e9\nc,assistant,cr\u00e8me\nd,user,plain\n"
                  .encode("cp1252"))
    res = ingest([f"csv:{p}"], quarantine_threshold=1.0, val_fraction=0, test_fraction=0)
    # both bad rows belong to conversation c: it is quarantined once, as a whole
    assert res.stats["conversations"] == 1 and list(res.quarantine["location"]) == ["legacy.csv:2-3"]
    assert list(res.quarantine["category"]) == ["encoding"]
    assert list(res.quarantine["conversation_id"]) == ["legacy-c"]
    assert res.quarantine["detail"].iloc[0].startswith("legacy.csv:2: not UTF-8")
    res = ingest([f"csv:{p}?encoding=cp1252"], val_fraction=0, test_fraction=0)
    assert list(res.turns["text"]) == ["caf\u00e9", "cr\u00e8me", "plain"]


def test_json_lines_saved_as_json_and_a_list_saved_as_jsonl(tmp_path):
    (tmp_path / "lines.json").write_text(json.dumps(_good(6)) + "\n" + json.dumps(_good(7)) + "\n{oops\n")
    (tmp_path / "list.jsonl").write_text(json.dumps([_good(8), _good(9)], indent=2))
    (tmp_path / "starts_bad.jsonl").write_text("[not json\n" + json.dumps(_good(10)) + "\n")
    res = ingest([f"dir:{tmp_path}"], quarantine_threshold=1.0, val_fraction=0, test_fraction=0)
    assert set(res.turns["conversation_id"]) == {f"jsonl-good-{i}" for i in (6, 7, 8, 9, 10)}
    assert sorted(res.quarantine["location"]) == ["lines.json:3", "starts_bad.jsonl:1"]
