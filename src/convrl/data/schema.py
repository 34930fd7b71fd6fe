"""The canonical conversation schema: a turn table and a persona table.

Turn table (one row per turn; Parquet ``turns.parquet``):

=================  ========  =====================================================
column             type      meaning
=================  ========  =====================================================
conversation_id    str       unique per conversation (source-prefixed)
turn_index         int       0, 1, 2, ... contiguous within a conversation
role               str       system | user | assistant
text               str       normalised, PII-redacted text
emotion            str/null  gold or silver emotion label of the turn, if known
act                str/null  dialogue act (inform, question, directive, commissive)
persona_id         str/null  persona the assistant speaks as, if known
feedback_rating    float     1-5 rating of this turn, NaN if none
feedback_thumb     float     1 (up) / 0 (down), NaN if none
source             str       the source spec the row came from
split              str       train | validation | test (by conversation)
truncated          bool      the text was cut to the configured budget
emotion_fine       str/null  the source's own, finer emotion label(s) when ``emotion``
                             was mapped from them (e.g. EmpatheticDialogues' 32
                             classes, GoEmotions' 28, comma-separated), else null
=================  ========  =====================================================

Persona table (``personas.parquet``): persona_id, name, description, traits
(JSON object trait->strength), style, emotional_range (JSON list),
emotion_map (JSON object user emotion -> response tone), facts (JSON list).
The configured persona cards come first; cards that sources bring (PersonaChat,
Blended Skill Talk, ConvAI2 bot profiles, a persona object in a JSONL record)
follow, with ids such as ``personachat-<hash of the persona sentences>`` and
their sentences as ``facts``.

Quarantine table (``quarantine.parquet``): source, location (file:line),
raw (the offending row, truncated), reason.
"""

from __future__ import annotations

import pandas as pd

ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation", "test")
TURN_COLUMNS = ["conversation_id", "turn_index", "role", "text", "emotion", "act", "persona_id",
                "feedback_rating", "feedback_thumb", "source", "split", "truncated", "emotion_fine"]
PERSONA_COLUMNS = ["persona_id", "name", "description", "traits", "style", "emotional_range",
                   "emotion_map", "facts"]
QUARANTINE_COLUMNS = ["source", "location", "raw", "reason"]


def empty_turns() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in TURN_COLUMNS})


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in QUARANTINE_COLUMNS})


def empty_personas() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in PERSONA_COLUMNS})


def _dtype(col: str) -> str:
    return {"turn_index": "int64", "feedback_rating": "float64", "feedback_thumb": "float64",
            "truncated": "bool"}.get(col, "object")


def conform_turns(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing optional columns and fix dtypes and column order."""
    df = df.copy()
    for c in TURN_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series([None] * len(df), dtype=_dtype(c)) if c not in (
                "feedback_rating", "feedback_thumb", "truncated") else (
                False if c == "truncated" else float("nan"))
    df["turn_index"] = df["turn_index"].astype("int64")
    for c in ("feedback_rating", "feedback_thumb"):
        df[c] = df[c].astype("float64")
    df["truncated"] = df["truncated"].astype(bool)
    for c in ("conversation_id", "role", "text", "source", "split", "emotion", "act", "persona_id", "emotion_fine"):
        col = df[c].astype("object")
        # One spelling of "unknown" (None), whether a loader left the key out or pandas made it NaN.
        df[c] = col.where(col.notna(), None)
    return df[TURN_COLUMNS].reset_index(drop=True)
