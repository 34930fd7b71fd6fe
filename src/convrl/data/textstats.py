"""Cheap text checks shared by reward heads, judges, self-play and monitoring.

One home for the rule that says a reply is not text at all, so a reward head and the
judge that checks it can never disagree about it::

    from convrl.data.textstats import is_degenerate
    is_degenerate("!!!! ???? ....")   # True
"""

from __future__ import annotations

# Below this share of letters a reply longer than 20 characters is punctuation soup or token
# salad; 0.4 is the held-out judges' long-standing rule (the reward heads used 0.3 before).
MIN_LETTER_SHARE = 0.4


def is_degenerate(text: str) -> bool:
    """Empty text, fewer than two letters, or (over 20 characters) mostly non-letters: nothing scores it above 0."""
    s = (text or "").strip()
    letters = sum(ch.isalpha() for ch in s)
    return letters < 2 or (len(s) > 20 and letters / len(s) < MIN_LETTER_SHARE)
