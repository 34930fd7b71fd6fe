"""PII redaction: e-mails, secrets in URL query strings, IPv4 addresses, card numbers and phone numbers.

One home for the patterns: ingest redacts turn texts (every source format goes
through the same call) and the quarantine's raw excerpts with them, and the
data checks test the stored turn table against the same e-mail and IP
patterns, so a check failure means redaction missed something rather than the
two disagreeing on what an e-mail is. The patterns are plain Python ``re``
syntax, which is what great-expectations' pandas engine uses::

    from convrl.data.pii import redact_pii
    counts = {}
    redact_pii("mail jo@example.com, https://x.io/?access_token=abc", counts)
    # 'mail [EMAIL], https://x.io/?access_token=[SECRET]'; counts == {'email': 1, 'url_secret': 1}

Card-like numbers (13-19 digits, spaces or dashes allowed) are Luhn-checked:
a valid one is a card, and a look-alike (an order number, a tracking id) is
kept verbatim rather than being mistaken for a phone number.
"""

from __future__ import annotations

import re
from typing import Iterable

PII_PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    # Any query parameter (after ?, & or ;) whose name says it holds a secret: see _secret_name.
    "url_secret": re.compile(r"([?&;#]([A-Za-z][\w.\-\[\]]{0,63})=)([^\s&#\"'<>]+)"),
    "ip": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "credit_card": re.compile(r"(?<![+\w])(?:\d[ -]?){12,18}\d\b"),
    "phone": re.compile(r"(?<![\w])(?<!\d[ .-])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3,4}[ .-]?\d{3,4}"
                        r"(?![\w])(?![ .-]\d)"),
}
PII_KINDS = tuple(PII_PATTERNS)
EMAIL_REGEX = PII_PATTERNS["email"].pattern
IPV4_REGEX = PII_PATTERNS["ip"].pattern

# Parameter names holding secrets: substrings that only secrets use, and whole name parts that are too short
# to match as substrings ("key" would hit "monkey", "sig" "design").
_SECRET_SUBSTRINGS = ("token", "secret", "passw", "pwd", "apikey", "api_key", "signature", "credential", "session",
                      "authoriz")
_SECRET_PARTS = {"key", "sig", "sid", "jwt", "pass", "otp", "pin", "auth"}
_SECRET_NAMES = {"code"}  # OAuth's authorisation code; "postal_code" and "country_code" are no secrets
# The secret names every redaction catches, as one regex the data checks can test stored text against.
URL_SECRET_REGEX = (r"(?i)[?&;#][\w.\-\[\]]*(?:" + "|".join(_SECRET_SUBSTRINGS) + r")[\w.\-\[\]]*="
                    r"(?!\[SECRET\])[^\s&#]")
_NAME_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D")
# Placeholders for card look-alikes while the phone pattern runs; private-use characters, which clean_text
# removes from every turn before redaction, so they cannot clash with the text.
_HOLD = re.compile("\ue000(\\d+)\ue001")


def _secret_name(name: str) -> bool:
    low = name.lower()
    if low in _SECRET_NAMES or any(s in low for s in _SECRET_SUBSTRINGS):
        return True
    return any(p.lower() in _SECRET_PARTS for p in _NAME_PARTS.findall(name))


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def redact_pii(text: str, counts: dict[str, int] | None = None, kinds: Iterable[str] | None = None) -> str:
    """Replace the PII in ``text`` (``kinds``: a subset of :data:`PII_KINDS`), counting replacements."""
    counts = counts if counts is not None else {}
    kinds = PII_KINDS if kinds is None else tuple(kinds)

    def sub(kind: str, repl, always: bool = False) -> None:
        nonlocal text
        if kind not in kinds and not always:
            return

        def f(m: re.Match) -> str:
            r = repl(m)
            if r != m.group(0) and kind in kinds and not r.startswith("\ue000"):  # held look-alikes: no PII
                counts[kind] = counts.get(kind, 0) + 1
            return r

        text = PII_PATTERNS[kind].sub(f, text)

    # Cheap guards first: most turns hold no '@', no query string and no digit, and skip every pattern.
    if "@" in text:
        sub("email", lambda m: "[EMAIL]")
    if "=" in text:
        sub("url_secret", lambda m: m.group(1) + "[SECRET]" if _secret_name(m.group(2)) else m.group(0))
    if _DIGIT.search(text) is None:
        return text
    sub("ip", lambda m: "[IP]")
    held: list[str] = []

    def card(m: re.Match) -> str:
        digits = _NON_DIGIT.sub("", m.group(0))
        if "credit_card" in kinds and luhn_ok(digits):
            return "[CARD]"
        held.append(m.group(0))  # a card look-alike: verbatim, and not a phone number either
        return f"\ue000{len(held) - 1}\ue001"

    if "credit_card" in kinds or "phone" in kinds:
        sub("credit_card", card, always=True)

    def phone(m: re.Match) -> str:
        digits = _NON_DIGIT.sub("", m.group(0))
        return "[PHONE]" if 7 <= len(digits) <= 15 else m.group(0)

    sub("phone", phone)
    if held:
        text = _HOLD.sub(lambda m: held[int(m.group(1))] if int(m.group(1)) < len(held) else m.group(0), text)
    return text


__all__ = ["EMAIL_REGEX", "IPV4_REGEX", "PII_KINDS", "PII_PATTERNS", "URL_SECRET_REGEX", "luhn_ok", "redact_pii"]
