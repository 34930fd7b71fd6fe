"""Rated and labelled sources: ConvAI2 human evaluation, user-satisfaction sessions, GoEmotions.

Specs (paths as in ``../shared/data``)::

    convai2_eval:convai2_human_eval                 every *.json in the folder (or one file)
    convai2_eval:convai2_human_eval?rated=1         only dialogues the human rated
    user_satisfaction:user_satisfaction             MWOZ/SGD/ReDial/CCPE .txt sessions (or one file)
    goemotions:goemotions/ekman                     train/dev/test .tsv + labels.txt (or one .tsv)
    goemotions:goemotions/original?multi=skip       leave out comments with conflicting emotions

ConvAI2: the human is ``user``, the bot ``assistant``; the human's 1-5
``eval_score`` becomes ``feedback_rating`` on every bot turn, per-message thumbs
(``evaluation_score`` 0/1) ``feedback_thumb``, and the bot profile a persona
card. Who the bot is comes from ``sender_class``, else ``participantN_id``,
else the ConvAI2 convention (participant2 is the bot). Dialogues in which the
human never wrote are left out and counted (``skipped: no human message``).

User satisfaction: USER -> user, SYSTEM -> assistant; the raters' scores on a
USER line (the user's satisfaction with the dialogue so far) are averaged and
given, as ``feedback_rating``, to the system turn just before it. The final
``OVERALL`` line is a session rating, which the turn table has no place for.

GoEmotions: each comment is a one-turn conversation of the ``user``;
``emotion`` is the Ekman grouping mapped to convrl's labels, ``emotion_fine``
the original label names. When a comment's labels map to several emotions the
first listed wins (``multi=first``) or the comment is skipped (``multi=skip``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from convrl.data.schema import Reason
from convrl.data.sources.base import Conversation, IngestError, Skipped, fact_persona, files_in, open_source, q
from convrl.data.sources.files import decode, iter_lines, json_list, refuse_binary, text_lines
from convrl.data.sources.corpora import split_from_name
from convrl.data.sources.labels import map_emotion

# ------------------------------------------------------------------ ConvAI2 human evaluation


def convai2_eval(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    path, opts = open_source(arg, source, ("rated",))
    rated_only = opts.get("rated", "0") in ("1", "true", "yes")
    files = files_in(path, ("*.json",))
    if not files:
        raise IngestError(f"{source}: no .json files in {path}")
    for f in files:
        for i, rec in enumerate(json_list(f, quarantine, source) or []):
            loc = f"{f.name}:dialogue {i}"
            conv = _convai2_dialogue(rec, f, i, loc, rated_only, quarantine, source)
            if conv is not None:
                yield conv


def _bot_sender(rec: dict) -> str:
    for p in ("participant1", "participant2"):
        if str((rec.get(f"{p}_id") or {}).get("class", "")).lower() == "bot":
            return p
    return "participant2"


def _convai2_dialogue(rec, f: Path, i: int, loc: str, rated_only: bool, quarantine, source):
    if not isinstance(rec, dict) or not isinstance(rec.get("dialog"), list):
        q(quarantine, source, loc, rec, "dialogue lacks a 'dialog' list", Reason.MISSING_FIELD)
        return None
    score = rec.get("eval_score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 5):
        q(quarantine, source, loc, rec, f"eval_score {score!r} is not a 1-5 rating", Reason.INVALID_VALUE)
        return None
    if rated_only and score is None:
        return Skipped("unrated (rated=1)")
    bot = _bot_sender(rec)
    turns = []
    for m in rec["dialog"]:
        if not isinstance(m, dict) or not isinstance(m.get("text"), str):
            q(quarantine, source, loc, rec, "a message lacks string 'text'", Reason.MISSING_FIELD)
            return None
        cls = str(m.get("sender_class") or "").lower()
        if cls not in ("bot", "human"):
            if m.get("sender") not in ("participant1", "participant2"):
                q(quarantine, source, loc, rec, f"unknown sender {m.get('sender')!r}", Reason.UNKNOWN_ROLE)
                return None
            cls = "bot" if m["sender"] == bot else "human"
        turn = {"role": "assistant" if cls == "bot" else "user", "text": m["text"]}
        if cls == "bot":
            if score is not None:
                turn["feedback_rating"] = float(score)
            thumb = m.get("evaluation_score")
            if thumb in (0, 1):
                turn["feedback_thumb"] = float(thumb)
        turns.append(turn)
    if not any(t["role"] == "user" and t["text"].strip() for t in turns):
        return Skipped("no human message")
    card = fact_persona("convai2", rec.get("bot_profile") or [], "ConvAI2 bot")
    cid = rec.get("dialog_id") or str(i)
    return Conversation(f"convai2-{f.stem}-{cid}", turns, persona_id=card and card.persona_id,
                        persona=card and card.to_row(), location=loc)


# ------------------------------------------------------------------ user satisfaction

def user_satisfaction(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, _ = open_source(arg, source)
    # *-action.txt files repeat a corpus's sessions with other action labels: reading both would duplicate them.
    files = [f for f in files_in(path, ("*.txt",)) if path.is_file() or not f.stem.endswith("-action")]
    if not files:
        raise IngestError(f"{source}: no .txt session files in {path}")
    for f in files:
        if refuse_binary(f, quarantine, source, "tab-separated text"):
            continue
        session: list[tuple[int, str]] = []
        count = 0
        for n, raw, _total in iter_lines(f):
            line = decode(raw)
            if line is None:
                session.append((n, None))
                continue
            if line.strip():
                session.append((n, line.rstrip("\r\n")))
                continue
            if session:
                conv = _session(f, count, session, quarantine, source)
                count += 1
                session = []
                if conv:
                    yield conv
        if session:
            conv = _session(f, count, session, quarantine, source)
            if conv:
                yield conv


def _scores(field: str) -> float | None:
    vals = [v.strip() for v in field.split(",") if v.strip()]
    if not vals:
        return None
    nums = [float(v) for v in vals]  # ValueError -> the caller quarantines the session
    if any(not 1 <= x <= 5 for x in nums):
        raise ValueError(f"scores {field!r} outside 1-5")
    return sum(nums) / len(nums)


def _session(f: Path, k: int, lines: list[tuple[int, str | None]], quarantine, source) -> Conversation | None:
    loc = f"{f.name}:{lines[0][0]}"
    raw = "\n".join(line or "<undecodable>" for _, line in lines)
    turns: list[dict] = []
    for n, line in lines:
        if line is None:
            q(quarantine, source, loc, raw, f"line {n} is not UTF-8 text", Reason.ENCODING)
            return None
        fields = line.split("\t")
        role = {"USER": "user", "SYSTEM": "assistant"}.get(fields[0].strip().upper())
        if role is None or len(fields) < 2:
            q(quarantine, source, loc, raw, f"line {n}: expected USER|SYSTEM<TAB>text<TAB>action<TAB>scores",
              Reason.MALFORMED_ROW)
            return None
        try:
            score = _scores(fields[3]) if len(fields) > 3 else None
        except ValueError as exc:
            q(quarantine, source, loc, raw, f"line {n}: bad satisfaction scores ({exc})", Reason.INVALID_VALUE)
            return None
        if role == "user" and fields[1].strip() == "OVERALL":
            continue
        # The score is the user's satisfaction so far: it rates the system turn just before.
        if role == "user" and score is not None and turns and turns[-1]["role"] == "assistant":
            turns[-1]["feedback_rating"] = score
        turns.append({"role": role, "text": fields[1]})
    if not turns:
        q(quarantine, source, loc, raw, "session has no turns", Reason.EMPTY_CONVERSATION)
        return None
    return Conversation(f"satisfaction-{f.stem}-{k}", turns, location=loc)


# ------------------------------------------------------------------ GoEmotions

def goemotions(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    path, opts = open_source(arg, source, ("multi", "labels"))
    multi = opts.get("multi", "first")
    if multi not in ("first", "skip"):
        raise IngestError(f"{source}: multi={multi!r}: use multi=first or multi=skip")
    files = files_in(path, ("*.tsv",))
    if not files:
        raise IngestError(f"{source}: no .tsv files in {path}")
    labels_path = Path(opts.get("labels") or (files[0].parent / "labels.txt"))
    if not labels_path.is_file():
        raise IngestError(f"{source}: GoEmotions needs labels.txt beside the TSV files (or ?labels=PATH)")
    names = [x.strip() for x in labels_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    unknown = [x for x in names if map_emotion(x) is None]
    if unknown:
        raise IngestError(f"{source}: labels {unknown} in {labels_path} have no convrl emotion")
    for f in files:
        if refuse_binary(f, quarantine, source, "TSV text"):
            continue
        split = split_from_name(f.stem)
        for n, loc, line in text_lines(f, quarantine, source):
            fields = line.rstrip("\r\n").split("\t")
            if fields == [""]:
                yield Skipped("blank line")
                continue
            try:
                ids = [int(x) for x in fields[1].split(",")] if len(fields) == 3 else None
            except ValueError:
                ids = None
            if ids is None or not ids or any(not 0 <= i < len(names) for i in ids):
                q(quarantine, source, loc, line, "expected text<TAB>label ids (comma-separated, "
                                                 f"0-{len(names) - 1})<TAB>comment id",
                  Reason.MALFORMED_ROW)
                continue
            fine = [names[i] for i in ids]
            mapped = list(dict.fromkeys(map_emotion(x) for x in fine))
            emotional = [m for m in mapped if m != "neutral"]
            if len(emotional) > 1 and multi == "skip":
                yield Skipped("several emotions (multi=skip)")
                continue
            emotion = emotional[0] if emotional else "neutral"
            yield Conversation(f"goemotions-{fields[2] or f'{f.stem}-{n}'}",
                               [{"role": "user", "text": fields[0], "emotion": emotion,
                                 "emotion_fine": ",".join(fine)}], split=split, location=loc)
