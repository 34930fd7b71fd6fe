"""One conversation from a loader -> clean, redacted turns, or the reason it goes to the quarantine whole.

The same checks run for every source format, after the loader's own parsing
and before deduplication (so a bad conversation is quarantined with its
reason, never removed as a near-duplicate of a good one):

* each turn: a known role, text that is a string and encodable as UTF-8
  (``encoding``: lone surrogates), known emotion/act labels, feedback in range;
* after cleaning, no turn may be empty (``empty_text``): dropping it would
  leave a hole (user, assistant, assistant), so the conversation goes whole;
* at least one turn, and at least one user turn (``incomplete_conversation``).

Texts are then PII-redacted (:mod:`convrl.data.pii`) and cut to the budget::

    from convrl.data.prepare import prepare
    turns, n_truncated = prepare(conv, max_chars=2000, max_tokens=0, pii=None, pii_counts={})
"""

from __future__ import annotations

from convrl.data.pii import redact_pii
from convrl.data.schema import ACTS, EMOTIONS, ROLES, Reason
from convrl.data.sources.base import Conversation, RecordError
from convrl.data.text import clean_text, truncate, utf8_problem


def _where(turn: dict, i: int) -> str:
    return turn.get("location") or f"message {i}"


def _check(turn: dict, i: int) -> None:
    """Raise :class:`RecordError` when a loader's turn breaks the schema (custom loaders included)."""
    where = _where(turn, i)
    if turn.get("role") not in ROLES:
        raise RecordError(Reason.UNKNOWN_ROLE, f"{where}: unknown role {turn.get('role')!r}")
    text = turn.get("text")
    if not isinstance(text, str):
        raise RecordError(Reason.INVALID_TYPE, f"{where}: text is {type(text).__name__}, not a string")
    bad = utf8_problem(text)
    if bad:
        raise RecordError(Reason.ENCODING, f"{where} ({turn['role']}): {bad}")
    if turn.get("emotion") is not None and turn["emotion"] not in EMOTIONS:
        raise RecordError(Reason.INVALID_VALUE, f"{where}: emotion {turn['emotion']!r} is not one of "
                                                f"{', '.join(EMOTIONS)}")
    if turn.get("act") is not None and turn["act"] not in ACTS:
        raise RecordError(Reason.INVALID_VALUE, f"{where}: act {turn['act']!r} is not one of {', '.join(ACTS)}")
    r, t = turn.get("feedback_rating"), turn.get("feedback_thumb")
    if r is not None and not (isinstance(r, (int, float)) and (r != r or 1 <= r <= 5)):
        raise RecordError(Reason.INVALID_VALUE, f"{where}: feedback_rating {r!r} is not in 1-5")
    if t is not None and not (isinstance(t, (int, float)) and (t != t or t in (0, 1))):
        raise RecordError(Reason.INVALID_VALUE, f"{where}: feedback_thumb {t!r} is not 0/1")


def prepare(conv: Conversation, max_chars: int, max_tokens: int, pii, pii_counts: dict[str, int]
            ) -> tuple[list[dict], int]:
    """Clean, redacted, truncated turns and how many were truncated; raises :class:`RecordError`.

    ``pii``: the kinds to redact (None = all, empty = none).
    """
    bad = utf8_problem(conv.conversation_id)
    if bad:
        raise RecordError(Reason.ENCODING, f"conversation id: {bad}")
    if not conv.turns:
        raise RecordError(Reason.EMPTY_CONVERSATION, "conversation has no turns")
    cleaned = []
    for i, t in enumerate(conv.turns):
        _check(t, i)
        text = clean_text(t["text"])
        if not text:
            what = "empty" if not t["text"] else "whitespace-only" if not t["text"].strip() else \
                "empty after cleaning (only invisible or control characters)"
            raise RecordError(Reason.EMPTY_TEXT, f"{_where(t, i)} ({t['role']}) is {what}; the conversation is "
                                                 "quarantined whole rather than kept with a hole")
        cleaned.append(text)
    if not any(t["role"] == "user" for t in conv.turns):
        roles = ", ".join(sorted({t["role"] for t in conv.turns}))
        raise RecordError(Reason.INCOMPLETE_CONVERSATION, f"conversation has no user turn (only {roles})")
    # Redaction counts only conversations that passed every check.
    turns, n_cut = [], 0
    for t, text in zip(conv.turns, cleaned):
        if pii is None or pii:
            text = redact_pii(text, pii_counts, pii)
        text, cut = truncate(text, max_chars, max_tokens)
        n_cut += cut
        turns.append({**t, "text": text, "truncated": cut})
    return turns, n_cut


__all__ = ["prepare"]
