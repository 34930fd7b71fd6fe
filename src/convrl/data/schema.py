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

Quarantine table (``quarantine.parquet``): one row per record that did not
arrive in the turn table (a JSON line or list element, a CSV/Parquet row or the
rows of one conversation, a whole file that could not be read):

=================  ========  =====================================================
column             type      meaning
=================  ========  =====================================================
source             str       the source spec
location           str       file:line, file:record N, file:row N, or file:2-4,7
                             (every row of a conversation quarantined whole)
category           str       a :class:`Reason` value, the same across all formats
detail             str       what exactly is wrong, naming the bad message or row
raw                str       the offending record, truncated, PII-redacted
conversation_id    str/null  the conversation the record belongs to, when known
duplicate_of       str/null  for ``duplicate``: the id of the conversation kept
=================  ========  =====================================================

The unit of quarantine is the conversation: a conversation with one bad
message or row goes to the quarantine whole, with the reason on the bad
message, rather than arriving with a hole in it.
"""

from __future__ import annotations

import enum

import pandas as pd

ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation", "test")
# convrl's emotion labels (Ekman's six plus neutral, as in DailyDialog) and dialogue acts: one home for both,
# read by the loaders, the data checks and the emotion reward head.
EMOTIONS = ("neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted")
ACTS = ("inform", "question", "directive", "commissive")


class Reason(str, enum.Enum):
    """Why a record is in the quarantine table; ``Reason.X.help`` says what it means and what to do."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_ROLE = "unknown_role"
    EMPTY_TEXT = "empty_text"
    EMPTY_CONVERSATION = "empty_conversation"
    INCOMPLETE_CONVERSATION = "incomplete_conversation"
    ENCODING = "encoding"
    OVERSIZE = "oversize"
    FORMAT_MISMATCH = "format_mismatch"
    UNSUPPORTED_FILE = "unsupported_file"
    UNREADABLE_FILE = "unreadable_file"
    MALFORMED_ROW = "malformed_row"
    TURN_INDEX_GAP = "turn_index_gap"
    DUPLICATE = "duplicate"
    OTHER = "other"

    @property
    def help(self) -> str:
        return REASON_HELP[self]

    def __str__(self) -> str:
        return self.value


REASON_HELP = {
    Reason.INVALID_JSON: "a line or file is not valid JSON",
    Reason.NOT_AN_OBJECT: "a record is valid JSON but not an object (a list, string, number or null)",
    Reason.MISSING_FIELD: "a required key or column is absent ('messages', 'content', 'role', a conversation id)",
    Reason.INVALID_TYPE: "a field has the wrong JSON or column type ('messages' an object, a turn index of 1.5)",
    Reason.INVALID_VALUE: "a value is out of range or unknown (a rating of 7, an unknown emotion or act)",
    Reason.UNKNOWN_ROLE: "a speaker role that is not user/assistant/system or a known alias (map it with roles=)",
    Reason.EMPTY_TEXT: "a message is empty or whitespace-only after cleaning: its conversation would have a hole",
    Reason.EMPTY_CONVERSATION: "a record holds no messages at all",
    Reason.INCOMPLETE_CONVERSATION: "a conversation lacks a part every conversation needs (a user turn)",
    Reason.ENCODING: "bytes that do not decode in the file's encoding, or text not encodable as UTF-8 (pass "
                     "?encoding=...)",
    Reason.OVERSIZE: "a line longer than the line limit (option max_line_bytes)",
    Reason.FORMAT_MISMATCH: "a file's content is not the format its extension or spec says (Parquet in .jsonl, "
                            "JSON lines in .csv)",
    Reason.UNSUPPORTED_FILE: "a file type the source does not read",
    Reason.UNREADABLE_FILE: "a file that cannot be read at all (corrupt, truncated, no header)",
    Reason.MALFORMED_ROW: "a CSV row that does not parse or has the wrong number of fields",
    Reason.TURN_INDEX_GAP: "turn indices of a conversation skip or repeat a value: turns were lost",
    Reason.DUPLICATE: "an exact or near duplicate of a conversation that was kept (duplicate_of names it)",
    Reason.OTHER: "a loader's own free-text reason outside these categories (see detail)",
}
TURN_COLUMNS = ["conversation_id", "turn_index", "role", "text", "emotion", "act", "persona_id",
                "feedback_rating", "feedback_thumb", "source", "split", "truncated", "emotion_fine"]
PERSONA_COLUMNS = ["persona_id", "name", "description", "traits", "style", "emotional_range",
                   "emotion_map", "facts"]
QUARANTINE_COLUMNS = ["source", "location", "category", "detail", "raw", "conversation_id", "duplicate_of"]


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
