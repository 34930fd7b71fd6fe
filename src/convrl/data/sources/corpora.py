"""Research dialogue corpora: DailyDialog, EmpatheticDialogues, PersonaChat / ConvAI2, Blended Skill Talk.

Specs (paths as in ``../shared/data``; see its README for the formats)::

    dailydialog:dailydialog/convlab3_unified/data.zip      ConvLab-3 unified zip (or a folder holding it)
    dailydialog:dailydialog/original_ijcnlp                the original release (dialogues_<split>.txt
                                                           + dialogues_emotion/act_<split>.txt)
    empatheticdialogues:empatheticdialogues/knowee_valid_test/parsed_raw_valid.json   (or the official CSVs)
    personachat:personachat/valid_self_original_no_cands.txt   ParlAI text; or the KnowEE JSON files
    blended_skill_talk:blended_skill_talk/val.json          KnowEE JSON, or ParlAI's BST JSON
    synthetic_persona_chat:synthetic_persona_chat/Synthetic-Persona-Chat_valid.csv   (LLM-written, not human)

Roles: the first speaker of a two-person dialogue is ``user``, the second
``assistant`` (in PersonaChat the assistant is "your persona", whose persona
sentences become a persona card in the persona table and the conversation's
``persona_id``). DailyDialog's per-turn emotion and act map to convrl's labels;
the source's own split is kept for ``split=source``. EmpatheticDialogues'
situation prompt becomes a leading system turn (``situation=none`` drops it) and
its 32-way emotion labels the first user turn (``emotion`` mapped to the seven
labels, ``emotion_fine`` the original). Option ``splits=train,test`` limits
DailyDialog to some of its splits.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Iterator

from convrl.data.schema import Reason
from convrl.data.sources.base import Conversation, IngestError, Skipped, fact_persona, files_in, open_source, q
from convrl.data.sources.files import decode, iter_lines, json_list, refuse_binary, text_lines
from convrl.data.sources.labels import (DAILYDIALOG_ACT_IDS, DAILYDIALOG_EMOTION_IDS, map_emotion,
                                        normalise_act)

_SPLITS = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
           "val": "validation", "test": "test"}


def _alternate(texts: list[str]) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "text": t} for i, t in enumerate(texts)]


# ------------------------------------------------------------------ DailyDialog

def dailydialog(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, opts = open_source(arg, source, ("splits",))
    keep = {_SPLITS.get(s.strip(), s.strip()) for s in opts.get("splits", "").split(",") if s.strip()}
    if path.is_dir() and (path / "data.zip").is_file():
        path = path / "data.zip"
    if path.is_file() and zipfile.is_zipfile(path):
        yield from _dd_convlab(path, keep, quarantine, source)
    elif path.is_dir():
        yield from _dd_original(path, keep, quarantine, source)
    else:
        raise IngestError(f"{source}: {path} is neither a ConvLab-3 data.zip nor a folder of the original release")


def _dd_convlab(path: Path, keep: set, quarantine, source) -> Iterator[Conversation]:
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith("dialogues.json")), None)
        if name is None:
            raise IngestError(f"{source}: {path} has no data/dialogues.json (not a ConvLab-3 unified zip)")
        try:
            dialogues = json.loads(zf.read(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            q(quarantine, source, f"{path.name}/{name}", "", f"malformed JSON: {exc}", Reason.INVALID_JSON)
            return
    speakers = {"user": "user", "system": "assistant"}
    for i, d in enumerate(dialogues):
        loc = f"{path.name}/{name}:dialogue {i}"
        if not isinstance(d, dict) or not isinstance(d.get("turns"), list):
            q(quarantine, source, loc, d, "dialogue lacks a 'turns' list", Reason.MISSING_FIELD)
            continue
        split = _SPLITS.get(str(d.get("data_split")))
        if keep and split not in keep:
            continue
        turns, bad = [], None
        for t in d["turns"]:
            role = speakers.get(t.get("speaker")) if isinstance(t, dict) else None
            if role is None or not isinstance(t.get("utterance"), str):
                bad = (f"turn {len(turns)} lacks a user/system speaker or a text utterance",
                       Reason.UNKNOWN_ROLE if isinstance(t, dict) and "speaker" in t and role is None
                       else Reason.MISSING_FIELD)
                break
            emo = t.get("emotion")
            acts = [a.get("intent") for a in (t.get("dialogue_acts") or {}).get("binary") or [] if isinstance(a, dict)]
            turns.append({"role": role, "text": t["utterance"], "emotion": map_emotion(emo) if emo else None,
                          "act": next((normalise_act(a) for a in acts if normalise_act(a)), None)})
        if bad:
            q(quarantine, source, loc, d, *bad)
            continue
        cid = str(d.get("dialogue_id") or f"dailydialog-{i}")
        yield Conversation(cid if cid.startswith("dailydialog") else f"dailydialog-{cid}", turns,
                           split=split, location=loc)


_DETOK = [(re.compile(r" ([,.!?;:%)\]])"), r"\1"), (re.compile(r"([(\[$]) "), r"\1"),
          (re.compile(r" ([’']) ?(s|t|m|d|re|ve|ll)\b"), r"\1\2"), (re.compile(r" (n[’']t)\b"), r"\1")]


def detokenise(text: str) -> str:
    """Undo the original release's spaces around punctuation ("here ?" -> "here?")."""
    for pat, repl in _DETOK:
        text = pat.sub(repl, text)
    return text


def _dd_original(root: Path, keep: set, quarantine, source) -> Iterator[Conversation]:
    texts = sorted(p for p in root.rglob("dialogues_*.txt")
                   if not re.match(r"dialogues_(emotion|act|topic)", p.name))
    if not texts:
        raise IngestError(f"{source}: no dialogues_<split>.txt text files under {root} "
                          "(the original release's train text may be missing; use the ConvLab-3 data.zip)")
    for tp in texts:
        tag = tp.stem.removeprefix("dialogues_")  # a split name, or "text" for the whole corpus
        split = _SPLITS.get(tag)
        if keep and split not in keep:
            continue
        suffix = "" if tag == "text" else f"_{tag}"
        emotions = _label_lines(tp.parent / f"dialogues_emotion{suffix}.txt")
        acts = _label_lines(tp.parent / f"dialogues_act{suffix}.txt")
        if refuse_binary(tp, quarantine, source, "text"):
            continue
        for n, loc, line in text_lines(tp, quarantine, source, f"{tp.parent.name}/{tp.name}"):
            utts = [u.strip() for u in line.split("__eou__")]
            if utts and not utts[-1]:
                utts = utts[:-1]  # the text after the last __eou__; an empty turn elsewhere is a hole: empty_text
            if not any(utts):
                q(quarantine, source, loc, line, "empty dialogue line", Reason.EMPTY_CONVERSATION)
                continue
            turns = _alternate([detokenise(u) for u in utts])
            for labels, key, table in ((emotions, "emotion", DAILYDIALOG_EMOTION_IDS),
                                       (acts, "act", DAILYDIALOG_ACT_IDS)):
                if labels is None:
                    continue
                ids = labels[n - 1] if n - 1 < len(labels) else []
                if len(ids) != len(turns) or any(i not in table for i in ids):
                    q(quarantine, source, loc, line, f"{len(turns)} turns but {key} labels {ids}",
                      Reason.INVALID_VALUE)
                    turns = []
                    break
                for t, i in zip(turns, ids):
                    t[key] = table[i]
            if turns:
                yield Conversation(f"dailydialog-{tag}-{n - 1}", turns, split=split, location=loc)


def _label_lines(path: Path) -> list[list[int]] | None:
    if not path.is_file():
        return None
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append([int(x) for x in line.split()])
        except ValueError:
            out.append([-1])  # flags the dialogue as mislabelled rather than shifting every later line
    return out


# ------------------------------------------------------------------ EmpatheticDialogues

def empatheticdialogues(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, opts = open_source(arg, source, ("situation",))
    situation = opts.get("situation", "system")
    if situation not in ("system", "none"):
        raise IngestError(f"{source}: situation={situation!r}: use situation=system or situation=none")
    files = files_in(path, ("*.json", "*.csv"))
    if not files:
        raise IngestError(f"{source}: no .json or .csv files in {path}")
    for f in files:
        records = _ed_csv(f, quarantine, source) if f.suffix.lower() == ".csv" else \
            ((f"{f.name}:record {i}", r) for i, r in enumerate(json_list(f, quarantine, source) or []))
        for loc, rec in records:
            utts = rec.get("utterence", rec.get("utterance")) if isinstance(rec, dict) else None
            if not isinstance(utts, list) or not utts or not all(isinstance(u, str) for u in utts):
                q(quarantine, source, loc, rec, "record lacks a list of utterances ('utterence')",
                  Reason.MISSING_FIELD)
                continue
            label = str(rec.get("label") or rec.get("context") or "").strip().lower()
            emo = map_emotion(label)
            if label and emo is None:
                q(quarantine, source, loc, rec, f"unknown EmpatheticDialogues emotion {label!r}",
                  Reason.INVALID_VALUE)
                continue
            turns = _alternate([u.replace("_comma_", ",") for u in utts])
            if label:
                turns[0].update(emotion=emo, emotion_fine=label if label != emo else None)
            prompt = str(rec.get("prompt") or "").replace("_comma_", ",").strip()
            if situation == "system" and prompt:
                turns.insert(0, {"role": "system", "text": f"Situation: {prompt}"})
            cid = str(rec.get("conv_id") or loc).replace(":", "_")
            yield Conversation(f"ed-{cid}", turns, split=split_from_name(f.stem), location=loc)


def _ed_csv(path: Path, quarantine, source) -> Iterator[tuple[str, dict]]:
    """The official release's CSV: one row per utterance, grouped here into KnowEE-style records."""
    if refuse_binary(path, quarantine, source, "CSV text"):
        return
    text = decode(path.read_bytes())
    if text is None:
        q(quarantine, source, path.name, "", "file is not UTF-8 text", Reason.ENCODING)
        return
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    need = ("conv_id", "utterance_idx", "context", "prompt", "utterance")
    if not all(c in header for c in need):
        q(quarantine, source, path.name, ",".join(header), f"EmpatheticDialogues CSV needs columns {need}",
          Reason.MISSING_FIELD)
        return
    col = {c: header.index(c) for c in need}
    current, start = None, 0
    for row in reader:
        loc = f"{path.name}:{reader.line_num}"
        if len(row) < len(header):
            q(quarantine, source, loc, ",".join(row), f"row has {len(row)} fields, the header has {len(header)}",
              Reason.MALFORMED_ROW)
            continue
        cid = row[col["conv_id"]]
        if current is None or current["conv_id"] != cid:
            if current:
                yield start, current
            current, start = {"conv_id": cid, "label": row[col["context"]], "prompt": row[col["prompt"]],
                              "utterence": []}, loc
        current["utterence"].append(row[col["utterance"]])
    if current:
        yield start, current


def split_from_name(stem: str) -> str | None:
    return next((v for k, v in _SPLITS.items() if re.search(rf"(^|[_\-.]){k}($|[_\-.])", stem.lower())), None)


# ------------------------------------------------------------------ PersonaChat, Blended Skill Talk

def personachat(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, _ = open_source(arg, source)
    files = files_in(path, ("*.txt", "*.json"))
    if not files:
        raise IngestError(f"{source}: no .txt or .json files in {path}")
    for f in files:
        if f.suffix.lower() == ".json":
            yield from _persona_json(f, "personachat", "PersonaChat", quarantine, source)
        else:
            yield from _parlai_text(f, quarantine, source)


def blended_skill_talk(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, _ = open_source(arg, source)
    files = files_in(path, ("*.json",))
    if not files:
        raise IngestError(f"{source}: no .json files in {path}")
    for f in files:
        yield from _persona_json(f, "bst", "Blended Skill Talk", quarantine, source)


def _persona_json(path: Path, prefix: str, label: str, quarantine, source) -> Iterator[Conversation]:
    """KnowEE JSON (``dialogue`` + speaker/listener personas) or ParlAI's BST JSON (``dialog`` + ``personas``)."""
    for i, rec in enumerate(json_list(path, quarantine, source) or []):
        loc = f"{path.name}:record {i}"
        if isinstance(rec, dict) and isinstance(rec.get("dialogue"), list):
            utts, facts = rec["dialogue"], rec.get("listener persona") or []
        elif isinstance(rec, dict) and isinstance(rec.get("dialog"), list):
            # ParlAI BST: [[speaker_idx, text], ...]; the second speaker (index 1) is the assistant.
            pairs = rec["dialog"]
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                q(quarantine, source, loc, rec, "'dialog' entries must be [speaker_index, text] pairs",
                  Reason.INVALID_TYPE)
                continue
            utts = [p[1] for p in pairs]
            personas = rec.get("personas") or [[], []]
            facts = personas[1] if len(personas) > 1 else []
            if pairs and pairs[0][0] == 1:
                utts = [None] + utts  # the assistant speaks first: keep roles aligned
        else:
            q(quarantine, source, loc, rec, "record lacks a 'dialogue' (or 'dialog') list", Reason.MISSING_FIELD)
            continue
        if not all(u is None or isinstance(u, str) for u in utts) or not any(utts):
            q(quarantine, source, loc, rec, "utterances must be a non-empty list of strings",
              Reason.INVALID_TYPE if utts else Reason.EMPTY_CONVERSATION)
            continue
        turns = [t for t in _alternate(utts) if t["text"] is not None]
        card = fact_persona(prefix, facts if isinstance(facts, list) else [], label)
        yield Conversation(f"{prefix}-{path.stem}-{i}", turns, persona_id=card and card.persona_id,
                           persona=card and card.to_row(), split=split_from_name(path.stem), location=loc)


def _parlai_text(path: Path, quarantine, source) -> Iterator[Conversation]:
    """ParlAI's text format: ``N text<TAB>label...`` lines, N restarting at 1 for each episode."""
    if refuse_binary(path, quarantine, source, "ParlAI text"):
        return
    episode: dict | None = None
    count = 0

    def finish(ep):
        if ep["bad"]:
            q(quarantine, source, ep["loc"], ep["raw"], *ep["bad"])
            return None
        if not any(ep["texts"]):
            q(quarantine, source, ep["loc"], ep["raw"], "episode has persona lines but no dialogue",
              Reason.EMPTY_CONVERSATION)
            return None
        card = fact_persona("personachat", ep["facts"], "PersonaChat")
        # A silent partner (__SILENCE__, kept as None) means the assistant opens: roles stay aligned.
        turns = [t for t in _alternate(ep["texts"]) if t["text"] is not None]
        return Conversation(f"personachat-{path.stem}-{count}", turns, persona_id=card and card.persona_id,
                            persona=card and card.to_row(), split=split_from_name(path.stem), location=ep["loc"])

    for n, raw, _total in iter_lines(path):
        line = decode(raw)
        loc = f"{path.name}:{n}"
        num, _, rest = (line or "").rstrip("\r\n").partition(" ")
        if line is None or not num.isdigit():
            if episode is None:
                episode = {"loc": loc, "raw": "", "texts": [], "facts": [], "bad": None}
            episode["bad"] = episode["bad"] or ((f"line {n}: not UTF-8 text", Reason.ENCODING) if line is None
                                                else (f"line {n} does not start with a line number",
                                                      Reason.MALFORMED_ROW))
            episode["raw"] = episode["raw"] or (line or raw.decode("latin-1"))[:500]
            continue
        if num == "1" and episode is not None:
            conv = finish(episode)
            count += 1
            if conv:
                yield conv
            episode = None
        if episode is None:
            episode = {"loc": loc, "raw": rest[:500], "texts": [], "facts": [], "bad": None}
        if rest.startswith("your persona:"):
            episode["facts"].append(rest.split(":", 1)[1].strip())
        elif rest.startswith("partner's persona:"):
            continue
        else:
            fields = rest.split("\t")
            text = fields[0]
            if text == "__SILENCE__":
                text = None
            episode["texts"].append(text)
            if len(fields) > 1 and fields[1]:
                episode["texts"].append(fields[1])
    if episode is not None:
        conv = finish(episode)
        if conv:
            yield conv


# ------------------------------------------------------------------ Synthetic-Persona-Chat

def synthetic_persona_chat(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    """CSV with ``user 1 personas``, ``user 2 personas``, ``Best Generated Conversation`` (LLM-written)."""
    path, _ = open_source(arg, source)
    for f in files_in(path, ("*.csv",)):
        if refuse_binary(f, quarantine, source, "CSV text"):
            continue
        text = decode(f.read_bytes(), "utf-8-sig")
        if text is None:
            q(quarantine, source, f.name, "", "file is not UTF-8 text", Reason.ENCODING)
            continue
        reader = csv.DictReader(io.StringIO(text))
        for i, row in enumerate(reader):
            loc = f"{f.name}:row {i}"
            conv = (row.get("Best Generated Conversation") or "").strip()
            turns, bad = [], None
            for line in conv.splitlines():
                # Generated text sometimes wraps the speaker tag in Markdown: "*User 1:* Hi".
                m = re.match(r"[\s*_]*User ([12])[\s*_]*:[\s*_]*(.*)", line)
                if m:
                    turns.append({"role": "user" if m.group(1) == "1" else "assistant", "text": m.group(2)})
                elif not re.search(r"\w", line):
                    continue  # separators such as "* * *"
                elif turns:
                    turns[-1]["text"] += "\n" + line.strip()
                else:
                    bad = f"line {line[:60]!r} has no 'User 1:'/'User 2:' prefix"
                    break
            if bad or not turns:
                q(quarantine, source, loc, row, bad or "no conversation text",
                  Reason.MALFORMED_ROW if bad else Reason.EMPTY_CONVERSATION)
                continue
            card = fact_persona("spc", (row.get("user 2 personas") or "").splitlines(), "Synthetic-Persona-Chat")
            yield Conversation(f"spc-{f.stem}-{i}", turns, persona_id=card and card.persona_id,
                               persona=card and card.to_row(), split=split_from_name(f.stem), location=loc)
