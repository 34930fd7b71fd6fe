"""Chat-log sources: chatterbot-corpus, OpenAI ``messages`` and ShareGPT JSON(L).

Specs::

    chatterbot:english                    the bundled chatterbot-corpus (the offline default)
    jsonl:chats.jsonl                     OpenAI chat format, one {"messages": [...]} per line
    sharegpt:sharegpt.json                ShareGPT: {"conversations": [{"from", "value"}, ...]}
    jsonl:folder/                         every *.jsonl / *.json file in a folder

``jsonl`` and ``sharegpt`` read both record shapes and both layouts (JSON lines
or one JSON list), so a file is never refused for the way it was saved. An
OpenAI record may carry ``id``, ``persona`` (an id, or a whole persona card as
an object) and, per message, ``feedback: {"rating": 1-5, "thumb": "up"|"down"}``,
``emotion`` and ``act``. ShareGPT roles: human/user -> user, gpt/assistant/bot
-> assistant, system -> system. Options: ``encoding=latin-1``,
``roles=NAME:user,...`` (extra role names). Files are decoded by their
byte-order mark when they have one (UTF-8/16/32). A record is a conversation:
one bad message quarantines the whole record, with the reason naming the
message. Blank lines are skipped and counted.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Iterator

import yaml

from convrl.data.personas import PersonaError, persona_from_dict
from convrl.data.schema import Reason
from convrl.data.sources.base import (MAX_LINE_BYTES, Conversation, IngestError, RecordError, Skipped, each_file,
                                      json_type, parse_role_map, q)
from convrl.data.sources.files import empty_file, first_char, read_json_document, read_lines, refuse_binary
from convrl.data.sources.labels import THUMBS, map_emotion, normalise_act


def chatterbot(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    lang = arg or "english"
    root = resources.files("chatterbot_corpus") / "data" / lang
    if not root.is_dir():
        raise IngestError(f"chatterbot corpus language '{lang}' not found; try 'chatterbot:english'")
    for res in sorted(root.iterdir(), key=lambda r: r.name):
        if not res.name.endswith((".yml", ".yaml")):
            continue
        try:
            doc = yaml.safe_load(res.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            q(quarantine, source, res.name, "", f"unreadable YAML: {exc}", Reason.UNREADABLE_FILE)
            continue
        topic = res.name.rsplit(".", 1)[0]
        for i, conv in enumerate((doc or {}).get("conversations") or []):
            loc = f"{res.name}:conversation {i}"
            if not isinstance(conv, list) or not conv:
                q(quarantine, source, loc, str(conv), "conversation is not a non-empty list of statements",
                  Reason.INVALID_TYPE if conv else Reason.EMPTY_CONVERSATION)
                continue
            turns = []
            for j, stmt in enumerate(conv):
                if not isinstance(stmt, str):
                    stmt = str(stmt) if isinstance(stmt, (int, float)) else None
                if stmt is None:
                    q(quarantine, source, loc, str(conv), f"statement {j} is not text", Reason.INVALID_TYPE)
                    turns = []
                    break
                turns.append({"role": "user" if j % 2 == 0 else "assistant", "text": stmt})
            if turns:
                yield Conversation(f"chatterbot-{topic}-{i}", turns, location=loc)


# ------------------------------------------------------------------ one record

def _content(value, i: int, key: str) -> str:
    """Message content as text: a string, or OpenAI's list of typed parts (text parts joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
        raise RecordError(Reason.INVALID_TYPE, f"message {i}: '{key}' parts hold no text")
    raise RecordError(Reason.INVALID_TYPE, f"message {i}: '{key}' is a JSON {json_type(value)}, not a string")


def _feedback(fb, i: int) -> dict:
    if fb is None:
        return {}
    if not isinstance(fb, dict):
        raise RecordError(Reason.INVALID_TYPE, f"message {i}: 'feedback' is a JSON {json_type(fb)}, not an object "
                                               "with rating/thumb")
    out = {}
    rating = fb.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            raise RecordError(Reason.INVALID_TYPE, f"message {i}: feedback rating {rating!r} is a JSON "
                                                   f"{json_type(rating)}, not a number from 1 to 5")
        if not 1 <= rating <= 5:
            raise RecordError(Reason.INVALID_VALUE, f"message {i}: feedback rating {rating!r} is not from 1 to 5")
        out["feedback_rating"] = float(rating)
    thumb = fb.get("thumb")
    if thumb is not None:
        t = THUMBS.get(str(thumb).strip().lower())
        if t is None:
            raise RecordError(Reason.INVALID_VALUE, f"message {i}: feedback thumb {thumb!r} is not up/down")
        out["feedback_thumb"] = t
    return out


def _labels(m: dict, i: int) -> dict:
    out = {}
    emo = m.get("emotion")
    if emo not in (None, ""):
        mapped = map_emotion(emo)
        if mapped is None:
            raise RecordError(Reason.INVALID_VALUE, f"message {i}: unknown emotion label {emo!r}")
        out["emotion"] = mapped
        if str(emo).strip().lower() != mapped:
            out["emotion_fine"] = str(emo).strip().lower()
    act = m.get("act")
    if act not in (None, ""):
        if normalise_act(act) is None:
            raise RecordError(Reason.INVALID_VALUE, f"message {i}: unknown dialogue act {act!r} "
                                                    "(allowed: inform, question, directive, commissive)")
        out["act"] = normalise_act(act)
    return out


def parse_record(obj, roles: dict[str, str]) -> tuple[list[dict], str]:
    """Turns of one OpenAI or ShareGPT record and its shape ("OpenAI"/"ShareGPT"); raises :class:`RecordError`."""
    if not isinstance(obj, dict):
        raise RecordError(Reason.NOT_AN_OBJECT, f"record is a JSON {json_type(obj)}, not an object")
    if "messages" in obj:
        key, role_key, text_key, shape = "messages", "role", "content", "OpenAI"
    elif "conversations" in obj:
        key, role_key, text_key, shape = "conversations", "from", "value", "ShareGPT"
    else:
        keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        raise RecordError(Reason.MISSING_FIELD, f"no 'messages' (OpenAI) or 'conversations' (ShareGPT) key "
                                                f"(keys: {keys})")
    msgs = obj[key]
    if not isinstance(msgs, list):
        raise RecordError(Reason.INVALID_TYPE, f"'{key}' is a JSON {json_type(msgs)}, not an array of messages")
    if not msgs:
        raise RecordError(Reason.EMPTY_CONVERSATION, f"'{key}' is an empty array")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RecordError(Reason.INVALID_TYPE, f"message {i} is a JSON {json_type(m)}, not an object")
        for k in (role_key, text_key):
            if k not in m:
                raise RecordError(Reason.MISSING_FIELD, f"message {i} has no '{k}'")
        text = _content(m[text_key], i, text_key)
        raw_role = m[role_key]
        if not isinstance(raw_role, str):
            raise RecordError(Reason.INVALID_TYPE, f"message {i}: '{role_key}' is a JSON {json_type(raw_role)}, "
                                                   "not a string")
        role = roles.get(raw_role.strip().lower())
        if role is None:
            raise RecordError(Reason.UNKNOWN_ROLE, f"unknown role {raw_role!r} in message {i} "
                                                   "(allowed: user, assistant, system and aliases such as human, "
                                                   "gpt, bot; map others with roles=NAME:user)")
        turns.append({"role": role, "text": text, **_feedback(m.get("feedback"), i), **_labels(m, i)})
    return turns, shape


def _record_id(obj) -> str | None:
    if not isinstance(obj, dict):
        return None
    cid = obj.get("id") if obj.get("id") not in (None, "") else obj.get("conversation_id")
    if cid is None or cid == "":
        return None
    if isinstance(cid, bool) or not isinstance(cid, (str, int)):
        raise RecordError(Reason.INVALID_TYPE, f"'id' is a JSON {json_type(cid)}, not a string")
    return str(cid)


def record_conversation(obj, roles, stem: str, n: int, loc: str, quarantine, source,
                        prefix: str | None = None) -> Conversation | None:
    """The conversation of one chat record, or None after quarantining it (the whole record) with the reason.

    Its id is ``PREFIX-<record id>`` (or ``PREFIX-<stem>-<n>``); the prefix defaults to the record's shape.
    """
    if prefix is None:
        prefix = "sharegpt" if isinstance(obj, dict) and "conversations" in obj and "messages" not in obj else "jsonl"
    cid = None
    try:
        rid = _record_id(obj)
        cid = f"{prefix}-{rid if rid is not None else f'{stem}-{n}'}"
        turns, _ = parse_record(obj, roles)
        persona_id, persona = obj.get("persona"), None
        if isinstance(persona_id, dict):
            try:
                card = persona_from_dict(persona_id, loc)
            except PersonaError as exc:
                raise RecordError(Reason.INVALID_VALUE, f"bad persona card: {exc}") from None
            persona_id, persona = card.persona_id, card.to_row()
        elif persona_id is not None and not isinstance(persona_id, str):
            raise RecordError(Reason.INVALID_TYPE, f"'persona' is a JSON {json_type(persona_id)}: it must be a "
                                                   "persona id (string) or a persona card (object)")
    except RecordError as exc:
        q(quarantine, source, loc, obj, exc.detail, exc.category, conversation_id=cid)
        return None
    return Conversation(cid, turns, persona_id=persona_id or None, persona=persona, location=loc)


# ------------------------------------------------------------------ files

def chat_file(path: Path, opts, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    encoding = opts.get("encoding", "utf-8")
    if (empty := empty_file(path)) is not None:
        yield empty
        return
    if refuse_binary(path, quarantine, source, "JSON lines", encoding):
        return
    roles = parse_role_map(opts.get("roles"), source)
    max_bytes = opts.integer("max_line_bytes", MAX_LINE_BYTES)
    first = first_char(path, encoding)
    if path.suffix.lower() == ".json" or first.startswith("["):
        # One JSON document: a list of records (how ShareGPT dumps and many exports are saved), a single
        # record, or {"data": [...]}. A .json file that does not parse is one quarantine row; a .jsonl
        # file that merely starts with "[" falls back to reading lines, so its good lines still arrive.
        is_json = path.suffix.lower() == ".json"
        problems: list[dict] = []
        doc = read_json_document(path, problems, source, encoding)
        if doc is None and is_json and any("Extra data" in p["detail"] for p in problems):
            is_json = False  # JSON lines saved as .json: read it line by line
        elif is_json:
            quarantine.extend(problems)
        if isinstance(doc, dict) and not ("messages" in doc or "conversations" in doc):
            lists = [v for v in doc.values() if isinstance(v, list)]
            doc = lists[0] if len(lists) == 1 else doc
        if isinstance(doc, dict):
            doc = [doc]
        if isinstance(doc, list):
            for n, obj in enumerate(doc):
                conv = record_conversation(obj, roles, path.stem, n, f"{path.name}:record {n}", quarantine, source)
                if conv:
                    yield conv
            return
        if is_json:
            if doc is not None:
                q(quarantine, source, path.name, doc, f"expected a JSON array of conversations, found a JSON "
                                                      f"{json_type(doc)}", Reason.INVALID_TYPE)
            return
    for n, line, raw, total in read_lines(path, encoding, quarantine, source, max_bytes):
        loc = f"{path.name}:{n}"
        if total > max_bytes:
            q(quarantine, source, loc, raw, f"line of {total:,} bytes exceeds the {max_bytes:,}-byte limit "
                                            "(option max_line_bytes)", Reason.OVERSIZE)
            continue
        if line is None:
            q(quarantine, source, loc, raw.decode("latin-1"), f"line is not {encoding.upper()} text (pass "
                                                              "?encoding=...)", Reason.ENCODING)
            continue
        if not line.strip():
            yield Skipped("blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            q(quarantine, source, loc, line, f"malformed JSON: {exc.msg} (column {exc.colno})", Reason.INVALID_JSON)
            continue
        conv = record_conversation(obj, roles, path.stem, n, loc, quarantine, source)
        if conv:
            yield conv


CHAT_OPTIONS = ("encoding", "roles", "max_line_bytes")


def jsonl(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    """OpenAI ``messages`` or ShareGPT ``conversations`` records, JSON lines or a JSON list."""
    yield from each_file(arg, quarantine, source, CHAT_OPTIONS, ("*.jsonl", "*.json"), chat_file)


sharegpt = jsonl  # same reader: each record says which shape it is
