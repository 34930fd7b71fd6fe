"""Converters for the human-rated sets beyond ConvAI2 and user satisfaction, in the meta-eval item format.

Every converter returns ``(items, stats)`` with items as in :mod:`convrl.rewards.human_data`
(``context``, ``response``, ``persona``, ``ratings``, ``group``) and reads a folder of
``../shared/data`` (research use only; licences in that folder's README)::

    items, stats = predictive_engagement_items("../shared/data/predictive_engagement")  # engaging 1-5, 0/1
    items, stats = holistic_items("../shared/data/holistic_eval")      # coherence / fluency, mean of 10 raters
    items, stats = hh_rlhf_items("../shared/data/hh_rlhf")              # harmless: chosen 1, rejected 0 per pair
    items, stats = toxichat_items("../shared/data/toxichat", "test")   # safe 1 / offensive 0, plausible 1 / 0

``group`` is the unit the meta-eval resamples and splits by: the query (both
replies to one DailyDialog query in Predictive Engagement, one HolisticEval
context), the HH-RLHF pair, the ToxiChat thread. The Predictive Engagement and
HolisticEval queries are DailyDialog *test* utterances (see the data README):
they are evaluation-only here, and nothing in convrl trains on them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections import defaultdict
from pathlib import Path

from convrl.rewards.human_data import RatedDataError


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise RatedDataError(f"{path}: not found ({what}); point the command at the data set's folder")
    return path


def _key(text: str) -> str:
    return hashlib.sha1(" ".join(text.split()).lower().encode()).hexdigest()[:12]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": " ".join(text.split())}]


# ------------------------------------------------------------------ Predictive Engagement (Ghazarian et al.)

def predictive_engagement_items(folder: str | Path, max_items: int = 0) -> tuple[list[dict], dict]:
    """600 DailyDialog query-reply pairs with the mean of 3 engagement scores (``engaging``, 1-5), and 297
    ConvAI-2017 pairs with a 0/1 engagement label (``engaging_binary``)."""
    root = Path(folder)
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    with _need(root / "Eng_Scores_queries_gen_gtruth_replies.csv", "Predictive Engagement scores").open(
            encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                scores[(row["query"].strip(), row["response"].strip())].append(float(row["human_score"]))
            except (KeyError, ValueError):
                raise RatedDataError(f"{root}: Eng_Scores rows need query, response and a numeric human_score") from None
    items = [{"context": _user(q), "response": r, "persona": [], "ratings": {"engaging": sum(v) / len(v)},
              "group": f"pe-dd-{_key(q)}"} for (q, r), v in scores.items() if r]
    amt = root / "humanAMT_engscores_utt.csv"
    n_binary = 0
    if amt.is_file():
        with amt.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("label") not in ("0", "1") or not (row.get("reply") or "").strip():
                    continue
                items.append({"context": _user(row["query"]), "response": row["reply"].strip(), "persona": [],
                              "ratings": {"engaging_binary": float(row["label"])},
                              "group": f"pe-convai-{_key(row['query'])}"})
                n_binary += 1
    if max_items:
        items = items[:max_items]
    return items, {"pairs_rated_1_5": len(scores), "pairs_rated_0_1": n_binary, "items": len(items),
                   "groups": len({it["group"] for it in items})}


# ------------------------------------------------------------------ HolisticEval (Pang et al.)

def _rows(path: Path, first_score: int) -> list[tuple[list[str], float]]:
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            try:
                vals = [float(x) for x in row[first_score:] if x.strip()]
            except ValueError:
                raise RatedDataError(f"{path}:{n}: scores after column {first_score} must be numbers") from None
            if vals:
                out.append((row[:first_score], sum(vals) / len(vals)))
    return out


def holistic_items(folder: str | Path, max_items: int = 0) -> tuple[list[dict], dict]:
    """Context coherence (200 pairs) and fluency (200 replies), each the mean of 10 raters' 1-5 scores.

    Fluency items borrow their context from the coherence file where the reply
    is there too (170 of 200); the rest are scored without context.
    """
    root = Path(folder)
    coherence = _rows(_need(root / "context_data_release.csv", "HolisticEval coherence"), 3)
    fluency = _rows(_need(root / "fluency_data_release.csv", "HolisticEval fluency"), 2)
    items, ctx_of = [], {}
    for (_, query, resp), mean in coherence:
        ctx_of[_key(resp)] = query
        items.append({"context": _user(query), "response": resp.strip(), "persona": [],
                      "ratings": {"coherence": mean}, "group": f"holistic-{_key(query)}"})
    for (_, resp), mean in fluency:
        query = ctx_of.get(_key(resp))
        items.append({"context": _user(query) if query else [], "response": resp.strip(), "persona": [],
                      "ratings": {"fluency": mean},
                      "group": f"holistic-{_key(query)}" if query else f"holistic-r-{_key(resp)}"})
    if max_items:
        items = items[:max_items]
    return items, {"coherence_items": len(coherence), "fluency_items": len(fluency), "items": len(items),
                   "groups": len({it["group"] for it in items})}


# ------------------------------------------------------------------ HH-RLHF harmless-base (test split)

def _hh_messages(text: str) -> list[dict]:
    msgs = []
    for part in text.split("\n\nHuman: ")[1:] if "\n\nHuman: " in text else []:
        human, *assistant = part.split("\n\nAssistant: ")
        msgs.append({"role": "user", "content": human.strip()})
        msgs += [{"role": "assistant", "content": a.strip()} for a in assistant]
    return msgs


def hh_rlhf_items(folder: str | Path, max_items: int = 0) -> tuple[list[dict], dict]:
    """Each pair as two items sharing a group: ``harmless`` 1 for the chosen last reply, 0 for the rejected."""
    root = Path(folder)
    path = root / "harmless-base" / "test.jsonl.gz" if root.is_dir() else root
    items, skipped = [], 0
    with gzip.open(_need(path, "HH-RLHF harmless-base test.jsonl.gz"), "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            rec = json.loads(line)
            chosen, rejected = _hh_messages(rec.get("chosen", "")), _hh_messages(rec.get("rejected", ""))
            # Pairs that differ before the last reply (5 of 2,312) or end without one are not comparable.
            if (len(chosen) < 2 or chosen[-1]["role"] != "assistant" or chosen[:-1] != rejected[:-1]
                    or len(rejected) != len(chosen) or chosen[-1]["content"] == rejected[-1]["content"]):
                skipped += 1
                continue
            for msgs, y in ((chosen, 1.0), (rejected, 0.0)):
                items.append({"context": msgs[:-1][-6:], "response": msgs[-1]["content"], "persona": [],
                              "ratings": {"harmless": y}, "group": f"hh-{n}"})
            if max_items and len(items) >= max_items:
                break
    return items, {"pairs": len(items) // 2, "skipped_pairs": skipped, "items": len(items),
                   "groups": len(items) // 2}


# ------------------------------------------------------------------ ToxiChat (Baheti et al.)

def toxichat_threads(folder: str | Path, split: str) -> list[dict]:
    if split not in ("train", "dev", "test"):
        raise RatedDataError(f"ToxiChat split must be train, dev or test, got {split!r}")
    path = _need(Path(folder) / f"{split}.jsonl", f"ToxiChat {split} split")
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if line.strip():
                rec = json.loads(line)
                rec["id"] = f"toxichat-{split}-{n}"
                out.append(rec)
    return out


def toxichat_items(folder: str | Path, split: str = "test", max_items: int = 0) -> tuple[list[dict], dict]:
    """The two chatbot replies of each thread: ``safe`` (1 Safe, 0 Offensive) and ``plausible`` (1 / 0)."""
    items = []
    for rec in toxichat_threads(folder, split):
        ctx = [{"role": "user", "content": " ".join(t["text"].split())} for t in rec["reddit_thread"]]
        for key in ("final_dgpt_response", "final_gpt3_response"):
            turn = rec.get(key) or {}
            text = " ".join(str(turn.get("text", "")).split())
            if not text or turn.get("offense_label") not in ("Safe", "Offensive"):
                continue
            ratings = {"safe": float(turn["offense_label"] == "Safe")}
            if turn.get("coherence") in ("Plausible", "Not Plausible"):
                ratings["plausible"] = float(turn["coherence"] == "Plausible")
            items.append({"context": ctx[-6:], "response": text, "persona": [], "ratings": ratings,
                          "group": rec["id"]})
    if max_items:
        items = items[:max_items]
    return items, {"split": split, "items": len(items), "groups": len({it["group"] for it in items})}


def toxichat_texts(folder: str | Path, split: str) -> tuple[list[str], list[int]]:
    """Every labelled turn of a split (Reddit comments and chatbot replies): text, 1 = offensive."""
    texts, labels = [], []
    for rec in toxichat_threads(folder, split):
        turns = list(rec["reddit_thread"]) + [rec.get("final_dgpt_response"), rec.get("final_gpt3_response")]
        for t in turns:
            if isinstance(t, dict) and t.get("offense_label") in ("Safe", "Offensive") and str(t.get("text")).strip():
                texts.append(" ".join(str(t["text"]).replace("Title:", " ").split()))
                labels.append(int(t["offense_label"] == "Offensive"))
    return texts, labels
