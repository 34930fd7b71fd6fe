"""Turn-text cleaning for ingest: Unicode normalisation, whitespace, and a character/token budget.

    from convrl.data.text import clean_text, truncate, utf8_problem
    clean_text("  \ufb01ne\u00a0 day ")          # 'fine day'
    truncate("one two three", 0, max_tokens=2)   # ('one two', True)

``utf8_problem`` finds text that cannot be stored as UTF-8 (lone surrogates,
e.g. from an escaped ``"\\ud83d"`` in valid JSON): such a record is an
``encoding`` error, never silently stripped.
"""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"[ \t\u00a0]+")
# ASCII control characters except tab and newline; the fast path of clean_text for ASCII text.
_ASCII_CONTROL = {i: None for i in (*range(0, 9), *range(11, 32), 127)}
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (a lone surrogate, and where), or None."""
    if text.isascii():
        return None
    m = _SURROGATE.search(text)
    if m is None:
        return None
    return f"lone surrogate U+{ord(m.group(0)):04X} at character {m.start()} cannot be encoded as UTF-8"


def clean_text(text: str) -> str:
    if text.isascii():
        text = text.translate(_ASCII_CONTROL)  # NFKC and the category filter are no-ops on the rest
    else:
        text = unicodedata.normalize("NFKC", text)
        text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    if "\n" not in text:
        return _WS.sub(" ", text).strip()
    lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line).strip()


def truncate(text: str, max_chars: int, max_tokens: int = 0) -> tuple[str, bool]:
    """Cut to ``max_chars`` characters and ``max_tokens`` tokens (words and punctuation marks,
    a close, tokenizer-free proxy for subword tokens; 0 = no token budget)."""
    cut = False
    if max_chars and len(text) > max_chars:
        text, cut = text[:max_chars].rstrip(), True
    if max_tokens and len(text) > max_tokens:  # a token has at least one character
        for i, m in enumerate(_TOKEN.finditer(text)):
            if i == max_tokens:
                text, cut = text[: m.start()].rstrip(), True
                break
    return text, cut


__all__ = ["clean_text", "truncate", "utf8_problem"]
