"""Chat-log sources: chatterbot-corpus, OpenAI ``messages`` and ShareGPT JSON(L), and whole folders.

Specs::

    chatterbot:english                    the bundled chatterbot-corpus (the offline default)
    jsonl:chats.jsonl                     OpenAI chat format, one {"messages": [...]} per line
    sharegpt:sharegpt.json                ShareGPT: {"conversations": [{"from", "value"}, ...]}
    jsonl:folder/                         every *.jsonl / *.json file in a folder
    dir:folder/                           every supported file, each by its extension

``jsonl`` and ``sharegpt`` read both record shapes and both layouts (JSON lines
or one JSON list), so a file is never refused for the way it was saved. An
OpenAI record may carry ``id``, ``persona`` (an id, or a whole persona card as
an object) and, per message, ``feedback: {"rating": 1-5, "thumb": "up"|"down"}``,
``emotion`` and ``act``. ShareGPT roles: human/user -> user, gpt/assistant/bot
-> assistant, system -> system. Options: ``encoding=latin-1``,
``roles=NAME:user,...`` (extra role names).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Iterator

import yaml

from convrl.data.personas import PersonaError, persona_from_dict
from convrl.data.sources.base import (MAX_LINE_BYTES, Conversation, IngestError, decode, files_in, iter_lines,
                                      open_source, parse_role_map, q, read_json_document, refuse_binary)
from convrl.data.sources.labels import map_emotion, normalise_act

_THUMBS = {"up": 1.0, "down": 0.0, "1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "+1": 1.0, "-1": 0.0}


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
            q(quarantine, source, res.name, "", f"unreadable YAML: {exc}")
            continue
        topic = res.name.rsplit(".", 1)[0]
        for i, conv in enumerate((doc or {}).get("conversations") or []):
            loc = f"{res.name}:conversation {i}"
            if not isinstance(conv, list) or not conv:
                q(quarantine, source, loc, str(conv), "conversation is not a non-empty list of statements")
                continue
            turns = []
            for j, stmt in enumerate(conv):
                if not isinstance(stmt, str):
                    stmt = str(stmt) if isinstance(stmt, (int, float)) else None
                if stmt is None:
                    q(quarantine, source, f"{loc} turn {j}", str(conv[j]), "statement is not text")
                    turns = []
                    break
                turns.append({"role": "user" if j % 2 == 0 else "assistant", "text": stmt})
            if turns:
                yield Conversation(f"chatterbot-{topic}-{i}", turns, location=loc)


# ------------------------------------------------------------------ one record

def _content(value) -> str | None:
    """Message content as text: a string, or OpenAI's list of typed parts (text parts joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    return None


def _feedback(fb) -> tuple[dict, str | None]:
    if fb is None:
        return {}, None
    if not isinstance(fb, dict):
        return {}, f"'feedback' must be an object with rating/thumb, got {type(fb).__name__}"
    out = {}
    rating = fb.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 1 <= rating <= 5:
            return {}, f"feedback rating {rating!r} is not a number from 1 to 5"
        out["feedback_rating"] = float(rating)
    thumb = fb.get("thumb")
    if thumb is not None:
        t = _THUMBS.get(str(thumb).strip().lower())
        if t is None:
            return {}, f"feedback thumb {thumb!r} is not up/down"
        out["feedback_thumb"] = t
    return out, None


def _labels(m: dict) -> tuple[dict, str | None]:
    out = {}
    emo = m.get("emotion")
    if emo not in (None, ""):
        mapped = map_emotion(emo)
        if mapped is None:
            return {}, f"unknown emotion label {emo!r}"
        out["emotion"] = mapped
        if str(emo).strip().lower() != mapped:
            out["emotion_fine"] = str(emo).strip().lower()
    act = m.get("act")
    if act not in (None, ""):
        if normalise_act(act) is None:
            return {}, f"unknown dialogue act {act!r} (allowed: inform, question, directive, commissive)"
        out["act"] = normalise_act(act)
    return out, None


def parse_record(obj, roles: dict[str, str]) -> tuple[list[dict] | None, str]:
    """Turns of one OpenAI or ShareGPT record, or ``(None, reason)``."""
    if not isinstance(obj, dict):
        return None, f"record is a JSON {type(obj).__name__}, not an object"
    if "messages" in obj:
        msgs, role_key, text_key, shape = obj["messages"], "role", "content", "OpenAI"
    elif "conversations" in obj:
        msgs, role_key, text_key, shape = obj["conversations"], "from", "value", "ShareGPT"
    else:
        return None, "no 'messages' (OpenAI) or 'conversations' (ShareGPT) list"
    if not isinstance(msgs, list) or not msgs:
        return None, f"missing or empty '{'messages' if shape == 'OpenAI' else 'conversations'}' list"
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return None, f"message {i} is not an object"
        text = _content(m.get(text_key))
        if text is None:
            return None, f"message {i} lacks string '{text_key}'"
        role = roles.get(str(m.get(role_key)).strip().lower()) if isinstance(m.get(role_key), str) else None
        if role is None:
            return None, (f"unknown role {m.get(role_key)!r} in message {i} "
                          f"(allowed: user, assistant, system and aliases such as human, gpt, bot)")
        fb, bad = _feedback(m.get("feedback"))
        if bad:
            return None, f"message {i}: {bad}"
        labels, bad = _labels(m)
        if bad:
            return None, f"message {i}: {bad}"
        turns.append({"role": role, "text": text, **fb, **labels})
    return turns, shape


def record_conversation(obj, roles, stem: str, n: int, loc: str, quarantine, source) -> Conversation | None:
    raw = obj
    turns, info = parse_record(obj, roles)
    if turns is None:
        q(quarantine, source, loc, raw, info)
        return None
    persona_id, persona = obj.get("persona"), None
    if isinstance(persona_id, dict):
        try:
            card = persona_from_dict(persona_id, loc)
        except PersonaError as exc:
            q(quarantine, source, loc, raw, f"bad persona card: {exc}")
            return None
        persona_id, persona = card.persona_id, card.to_row()
    elif persona_id is not None and not isinstance(persona_id, str):
        q(quarantine, source, loc, raw, "'persona' must be a persona id (string) or a persona card (object)")
        return None
    cid = obj.get("id") or obj.get("conversation_id") or f"{stem}-{n}"
    prefix = "jsonl" if info == "OpenAI" else "sharegpt"
    return Conversation(f"{prefix}-{cid}", turns, persona_id=persona_id or None, persona=persona, location=loc)


# ------------------------------------------------------------------ files

def _chat_file(path: Path, opts, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    if refuse_binary(path, quarantine, source, "JSON lines"):
        return
    encoding = opts.get("encoding", "utf-8")
    roles = parse_role_map(opts.get("roles"), source)
    max_bytes = opts.integer("max_line_bytes", MAX_LINE_BYTES)
    with path.open("rb") as fh:
        first = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.suffix.lower() == ".json" or first.startswith(b"["):
        # One JSON document: a list of records (how ShareGPT dumps and many exports are saved), a single
        # record, or {"data": [...]}. A .json file that does not parse is one quarantine row; a .jsonl
        # file that merely starts with "[" falls back to reading lines, so its good lines still arrive.
        is_json = path.suffix.lower() == ".json"
        problems: list[dict] = []
        doc = read_json_document(path, problems, source, encoding)
        if doc is None and is_json and any("Extra data" in p["reason"] for p in problems):
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
                q(quarantine, source, path.name, doc, "expected a JSON list of conversations")
            return
    for n, raw, total in iter_lines(path, max_bytes):
        loc = f"{path.name}:{n}"
        if total > max_bytes:
            q(quarantine, source, loc, raw, f"line of {total:,} bytes exceeds the {max_bytes:,}-byte limit "
                                            "(option max_line_bytes)")
            continue
        line = decode(raw, encoding)
        if line is None:
            q(quarantine, source, loc, raw.decode("latin-1"), f"not {encoding.upper()} text (pass ?encoding=...)")
            continue
        if n == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            q(quarantine, source, loc, line, f"malformed JSON: {exc.msg}")
            continue
        conv = record_conversation(obj, roles, path.stem, n, loc, quarantine, source)
        if conv:
            yield conv


CHAT_OPTIONS = ("encoding", "roles", "max_line_bytes")


def jsonl(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    """OpenAI ``messages`` or ShareGPT ``conversations`` records, JSON lines or a JSON list."""
    path, opts = open_source(arg, source, CHAT_OPTIONS)
    files = files_in(path, ("*.jsonl", "*.json"))
    if not files:
        raise IngestError(f"{source}: no .jsonl or .json files in {path}")
    for f in files:
        yield from _chat_file(f, opts, quarantine, source)


sharegpt = jsonl  # same reader: each record says which shape it is


def folder(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    """Every file of a folder by its extension: .jsonl/.json chat records, .csv/.tsv and .parquet turn rows.

    Files with other extensions are quarantined (one row each) rather than skipped unseen.
    """
    from convrl.data.sources.tabular import TABLE_OPTIONS, csv_file, parquet_file

    path, opts = open_source(arg, source, tuple(sorted(set(CHAT_OPTIONS) | set(TABLE_OPTIONS))))
    if not path.is_dir():
        raise IngestError(f"{source}: {path} is not a folder")
    chat_opts = type(opts)(source, {k: v for k, v in opts.values.items() if k in CHAT_OPTIONS}, CHAT_OPTIONS)
    table_opts = type(opts)(source, {k: v for k, v in opts.values.items() if k in TABLE_OPTIONS}, TABLE_OPTIONS)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        ext = f.suffix.lower()
        if f.name.startswith("."):
            continue
        if ext in (".jsonl", ".json"):
            yield from _chat_file(f, chat_opts, quarantine, source)
        elif ext in (".csv", ".tsv"):
            yield from csv_file(f, table_opts, quarantine, source)
        elif ext == ".parquet":
            yield from parquet_file(f, table_opts, quarantine, source)
        else:
            q(quarantine, source, str(f.relative_to(path)), "", f"unsupported file type '{ext or f.name}' "
              "(dir: reads .jsonl, .json, .csv, .tsv, .parquet)")
