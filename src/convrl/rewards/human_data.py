"""Human-rated dialogue data as meta-evaluation items, and the JSONL format ``convrl meta-eval`` reads.

One item is a response in its context with human ratings::

    {"context": [{"role": "user", "content": "..."}, ...], "response": "...",
     "persona": ["i love dogs.", ...],            # optional: the responder's persona sentences
     "ratings": {"thumb": 1, "dialogue_score": 4},  # any names, numbers; an item may lack some
     "group": "convai2-0x40187d59"}                 # optional: the dialogue, for clustered bootstrap

Converters for the research sets in ``../shared/data`` (research use only;
their licences differ, see that folder's README)::

    items, stats = convai2_items("../shared/data/convai2_human_eval", max_items=2000)
    items, stats = satisfaction_items("../shared/data/user_satisfaction", max_items=2000)
    write_jsonl(items, "convai2_rated.jsonl")

or from the shell: ``convrl meta-eval-data convai2 ../shared/data/convai2_human_eval out.jsonl``.

ConvAI2: the human's 1-5 rating of the bot (``eval_score``) becomes
``dialogue_score`` on every bot message of the dialogue, the per-message thumb
(0/1, where given) ``thumb``, and whether the human recognised the bot's persona
``profile_match``. The bot is the ``sender_class: Bot`` side, else
``participantN_id.class``, else participant2 (the ConvAI2 convention).
User satisfaction: each SYSTEM turn gets ``satisfaction``, the raters' mean
score on the USER line after it (the user's satisfaction with the dialogue so
far), and ``overall``, the session's overall rating.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np


class RatedDataError(ValueError):
    """A rated-items file or folder cannot be read; the message says where and why."""


# ------------------------------------------------------------------ JSONL format

def read_jsonl(path: str | Path, limit: int = 0) -> list[dict]:
    """Validated meta-eval items; a bad line fails with its line number."""
    p = Path(path)
    if not p.is_file():
        raise RatedDataError(f"{p}: no such file")
    items = []
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RatedDataError(f"{p}:{n}: not JSON ({exc.msg})") from None
            items.append(validate_item(obj, f"{p}:{n}"))
            if limit and len(items) >= limit:
                break
    if not items:
        raise RatedDataError(f"{p}: no items")
    return items


def validate_item(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise RatedDataError(f"{where}: expected a JSON object")
    ctx = obj.get("context")
    if not isinstance(ctx, list) or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in ctx):
        raise RatedDataError(f"{where}: 'context' must be a list of {{role: system|user|assistant, content: str}}")
    if not isinstance(obj.get("response"), str):
        raise RatedDataError(f"{where}: 'response' must be a string")
    persona = obj.get("persona") or []
    if not isinstance(persona, list) or not all(isinstance(s, str) for s in persona):
        raise RatedDataError(f"{where}: 'persona' must be a list of strings")
    ratings = obj.get("ratings")
    if not isinstance(ratings, dict) or not ratings:
        raise RatedDataError(f"{where}: 'ratings' must be a non-empty object of name -> number")
    clean = {}
    for k, v in ratings.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise RatedDataError(f"{where}: rating '{k}' = {v!r} is not a number")
        clean[str(k)] = float(v)
    return {"context": [{"role": m["role"], "content": m["content"]} for m in ctx], "response": obj["response"],
            "persona": persona, "ratings": clean, "group": str(obj.get("group", ""))}


def write_jsonl(items: list[dict], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps(it, ensure_ascii=False) + "\n")
    return p


def held_out(group: str, fraction: float = 0.3, seed: int = 13) -> bool:
    """Deterministic split by dialogue: the same dialogue is always on the same side."""
    h = hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()
    return int(h[:8], 16) / 0xFFFFFFFF < fraction


def _items_from(dialogues: list[dict], context_messages: int, max_items: int, per_dialogue: int = 0) -> list[dict]:
    items = []
    for d in dialogues:
        msgs = d["messages"]
        picked = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or not m.get("ratings"):
                continue
            ctx = [{"role": x["role"], "content": x["content"]} for x in msgs[max(0, i - context_messages):i]]
            if not any(x["role"] == "user" for x in ctx):
                continue  # an opening line answers nothing: relevance is undefined
            picked.append({"context": ctx, "response": m["content"], "persona": d.get("persona", []),
                           "ratings": dict(m["ratings"]), "group": d["id"]})
        if per_dialogue and len(picked) > per_dialogue:
            # Evenly spaced, so early and late turns of a dialogue are both represented.
            picked = [picked[round(k * (len(picked) - 1) / max(1, per_dialogue - 1))] for k in range(per_dialogue)]
        items.extend(picked)
        if max_items and len(items) >= max_items:
            return items[:max_items]
    return items


# ------------------------------------------------------------------ ConvAI2 human evaluation

def _bot_side(rec: dict) -> str:
    for p in ("participant1", "participant2"):
        if str((rec.get(f"{p}_id") or {}).get("class", "")).lower() == "bot":
            return p
    return "participant2"


def convai2_dialogues(folder: str | Path, min_bot_turns: int = 2) -> tuple[list[dict], dict]:
    """Rated ConvAI2 dialogues as ``{id, messages, persona, score}``; stats say how many were left out and why."""
    root = Path(folder)
    files = sorted(root.glob("*.json")) if root.is_dir() else [root]
    if not files or not files[0].is_file():
        raise RatedDataError(f"{root}: no ConvAI2 .json files")
    out, stats = [], {"dialogues": 0, "unrated": 0, "too_short": 0, "kept": 0}
    seen: set[str] = set()
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RatedDataError(f"{f}: not a JSON list of dialogues ({exc})") from None
        for i, rec in enumerate(data if isinstance(data, list) else []):
            stats["dialogues"] += 1
            score = rec.get("eval_score") if isinstance(rec, dict) else None
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not 1 <= score <= 5:
                stats["unrated"] += 1
                continue
            bot = _bot_side(rec)
            pm = rec.get("profile_match")
            msgs = []
            for m in rec.get("dialog") or []:
                if not isinstance(m, dict) or not isinstance(m.get("text"), str):
                    continue
                cls = str(m.get("sender_class") or "").lower()
                is_bot = cls == "bot" if cls in ("bot", "human") else m.get("sender") == bot
                msg = {"role": "assistant" if is_bot else "user", "content": m["text"]}
                if is_bot:
                    r = {"dialogue_score": float(score)}
                    if m.get("evaluation_score") in (0, 1):
                        r["thumb"] = float(m["evaluation_score"])
                    if pm in (0, 1):
                        r["profile_match"] = float(pm)
                    msg["ratings"] = r
                msgs.append(msg)
            n_bot = sum(m["role"] == "assistant" for m in msgs)
            n_user = sum(m["role"] == "user" for m in msgs)
            if n_bot < min_bot_turns or n_user < 1:
                stats["too_short"] += 1
                continue
            # The same dialogue appears in several exports; keep it once (by its text).
            key = hashlib.sha1(json.dumps([m["content"] for m in msgs]).encode()).hexdigest()[:12]
            if key in seen:
                stats["duplicates"] = stats.get("duplicates", 0) + 1
                continue
            seen.add(key)
            did = str(rec.get("dialog_id") or f"{f.stem}-{i}")
            out.append({"id": f"convai2-{did}", "messages": msgs, "persona": list(rec.get("bot_profile") or []),
                        "score": float(score)})
    stats["kept"] = len(out)
    return out, stats


def convai2_items(folder: str | Path, max_items: int = 0, context_messages: int = 6, seed: int = 13,
                  per_dialogue: int = 0) -> tuple[list[dict], dict]:
    dialogues, stats = convai2_dialogues(folder)
    random.Random(seed).shuffle(dialogues)
    items = _items_from(dialogues, context_messages, max_items, per_dialogue)
    return items, {**stats, "items": len(items), "groups": len({it["group"] for it in items})}


# ------------------------------------------------------------------ user satisfaction

def _mean_scores(field: str) -> float | None:
    vals = [v.strip() for v in field.split(",") if v.strip()]
    try:
        nums = [float(v) for v in vals]
    except ValueError:
        return None
    nums = [x for x in nums if 1 <= x <= 5]
    return sum(nums) / len(nums) if nums else None


def satisfaction_dialogues(folder: str | Path, corpora: tuple[str, ...] = ()) -> tuple[list[dict], dict]:
    """Sessions of MWOZ/SGD/ReDial/CCPE ``.txt`` files with per-SYSTEM-turn satisfaction and overall rating."""
    root = Path(folder)
    files = sorted(f for f in root.glob("*.txt") if not f.stem.endswith("-action")) if root.is_dir() else [root]
    if corpora:
        files = [f for f in files if f.stem in corpora]
    if not files or not files[0].is_file():
        raise RatedDataError(f"{root}: no user-satisfaction .txt session files")
    out, stats = [], {"sessions": 0, "kept": 0}
    for f in files:
        blocks = f.read_text(encoding="utf-8", errors="replace").split("\n\n")
        for k, block in enumerate(blocks):
            lines = [ln for ln in block.splitlines() if ln.strip()]
            if not lines:
                continue
            stats["sessions"] += 1
            msgs, overall = [], None
            for ln in lines:
                fields = ln.split("\t")
                role = {"USER": "user", "SYSTEM": "assistant"}.get(fields[0].strip().upper())
                if role is None or len(fields) < 2:
                    continue
                score = _mean_scores(fields[3]) if len(fields) > 3 else None
                if role == "user" and fields[1].strip() == "OVERALL":
                    overall = score
                    continue
                # A USER line's score rates the dialogue so far, i.e. the SYSTEM turn just before it.
                if role == "user" and score is not None and msgs and msgs[-1]["role"] == "assistant":
                    msgs[-1]["ratings"] = {"satisfaction": score}
                msgs.append({"role": role, "content": fields[1]})
            if overall is not None:
                for m in msgs:
                    if m.get("ratings"):
                        m["ratings"]["overall"] = overall
            if any(m.get("ratings") for m in msgs):
                out.append({"id": f"satisfaction-{f.stem}-{k}", "messages": msgs, "persona": [],
                            "corpus": f.stem, "score": overall})
    stats["kept"] = len(out)
    return out, stats


def satisfaction_items(folder: str | Path, max_items: int = 0, context_messages: int = 6, seed: int = 13,
                       per_dialogue: int = 0, corpora: tuple[str, ...] = ()) -> tuple[list[dict], dict]:
    dialogues, stats = satisfaction_dialogues(folder, corpora)
    random.Random(seed).shuffle(dialogues)
    items = _items_from(dialogues, context_messages, max_items, per_dialogue)
    return items, {**stats, "items": len(items), "groups": len({it["group"] for it in items})}


# ------------------------------------------------------------------ scoring

def score_items(scorer, items: list[dict], batch_size: int = 128, progress: bool = False) -> dict[str, np.ndarray]:
    """Every head (and composite, details, the length baseline) for every item."""
    from tqdm.auto import tqdm

    from convrl.rewards.environment import persona_from_sentences

    cards: dict[tuple, object] = {}
    cols: dict[str, list] = {}
    for i in tqdm(range(0, len(items), batch_size), desc="scoring", disable=not progress):
        chunk = items[i:i + batch_size]
        personas = []
        for it in chunk:
            key = tuple(it.get("persona") or ())
            if key not in cards:
                cards[key] = persona_from_sentences(list(key))
            personas.append(cards[key])
        batch = scorer.score([it["context"] for it in chunk], [it["response"] for it in chunk], personas)
        # Numeric details too: fluency, repetition, appropriateness, and <head>_untrained beside a learned head.
        named = {**batch.heads, "composite": batch.composite,
                 **{k: v for k, v in batch.details.items() if np.asarray(v).dtype.kind == "f"}}
        for k, v in named.items():
            cols.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    if any(f"{h}_untrained" in out for h in scorer.weights):
        # The untrained composite (same weights over the untrained heads): the baseline a learned composite must beat.
        w = scorer.weights
        out["composite_untrained"] = sum(w[h] * out.get(f"{h}_untrained", out[h]) for h in w) / sum(w.values())
    out["baseline:length"] = np.array([len(it["response"].split()) for it in items], dtype=np.float64)
    return out


CONVERTERS = {"convai2": convai2_items, "user_satisfaction": satisfaction_items}
