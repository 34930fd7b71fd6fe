"""Source loaders, by spec kind. A spec is ``kind:PATH`` with optional ``?key=value&...`` options.

Every source also takes the generic options ingest applies (see
:mod:`convrl.data.ingest`): ``cap=N`` (keep at most N conversations),
``weight=W`` (keep a deterministic share W in (0, 1]), ``min_turns=N`` and
``split=source`` (keep the source's own train/validation/test split).

=======================  ======================================================
kind                     reads
=======================  ======================================================
chatterbot:english       the bundled chatterbot-corpus (offline default)
jsonl / sharegpt:PATH    OpenAI ``messages`` or ShareGPT ``conversations``, JSON lines or a JSON list
csv / parquet:PATH       one row per turn, columns mapped with options
hf:PATH|NAME             a ``datasets`` save_to_disk folder, or a hub name when reachable
dir:PATH                 every .jsonl/.json/.csv/.tsv/.parquet file of a folder, by extension
dailydialog:PATH         ConvLab-3 ``data.zip`` or the original release folder
empatheticdialogues:PATH KnowEE JSON or the official CSV
personachat:PATH         ParlAI text (``your persona:`` lines) or KnowEE JSON
blended_skill_talk:PATH  KnowEE JSON or ParlAI's BST JSON
synthetic_persona_chat   Synthetic-Persona-Chat CSV (LLM-written)
convai2_eval:PATH        ConvAI2 human-evaluation JSON (ratings, thumbs, bot persona)
user_satisfaction:PATH   MWOZ/SGD/ReDial/CCPE satisfaction sessions
goemotions:PATH          GoEmotions TSV (single-turn, emotion labels)
mlflow-traces:EXPERIMENT served sessions with thumbs/ratings and arena choices (``?since=7d``)
=======================  ======================================================
"""

from __future__ import annotations

from convrl.data.sources.base import Conversation, IngestError, Skipped
from convrl.data.sources.chat import chatterbot, jsonl, sharegpt
from convrl.data.sources.corpora import (blended_skill_talk, dailydialog, empatheticdialogues, personachat,
                                         synthetic_persona_chat)
from convrl.data.sources.feedback import convai2_eval, goemotions, user_satisfaction
from convrl.data.sources.mlflow_traces import mlflow_traces
from convrl.data.sources.folder import folder
from convrl.data.sources.hf import hf_source
from convrl.data.sources.tabular import csv_source, parquet_source

SOURCE_LOADERS = {
    "chatterbot": chatterbot, "jsonl": jsonl, "sharegpt": sharegpt, "csv": csv_source, "parquet": parquet_source,
    "hf": hf_source, "dir": folder, "dailydialog": dailydialog, "empatheticdialogues": empatheticdialogues,
    "personachat": personachat, "blended_skill_talk": blended_skill_talk,
    "synthetic_persona_chat": synthetic_persona_chat, "convai2_eval": convai2_eval,
    "user_satisfaction": user_satisfaction, "goemotions": goemotions,
}
SOURCE_LOADERS["mlflow-traces"] = mlflow_traces  # served conversations + arena choices (convrl serve)

__all__ = ["SOURCE_LOADERS", "Conversation", "IngestError", "Skipped"]
