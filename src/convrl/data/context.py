"""ConversationContextManager: what of a long conversation the policy gets to see.

The last ``max_context_length`` turns go into the prompt verbatim, within a
token budget; older turns are compressed into a memory line that stays in the
system prompt: the topics talked about and what the user said about themself
(name, likes, dislikes, facts). So a 30-turn chat still fits a small model's
window and still knows the user's name from turn 1::

    ctx = ConversationContextManager(max_context_length=10, token_budget=600)
    for role, text in history:
        ctx.add(role, text)
    messages = ctx.messages(persona.system_prompt(user_emotion))
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

_STOP = set("""a an the and or but if then so to of in on at for with about from by as is are was were be been
being am do does did have has had i me my mine you your yours he she it we they them their our this that these
those what which who whom how why when where not no yes just very really also too can could would should will
shall may might must there here up down out over again more most some any all than its it's i'm you're don't
doesn't didn't can't won't okay ok oh well like get got go going know think want yeah hi hello thanks thank""".split())

_PREFERENCE_PATTERNS = [
    (re.compile(r"\bmy name is ([A-Z][\w'-]+)", re.I), "name: {0}"),
    (re.compile(r"\bcall me ([A-Z][\w'-]+)", re.I), "name: {0}"),
    (re.compile(r"\bi(?: really)? (love|like|enjoy|adore|prefer) ([^.,;!?]{2,40})", re.I), "likes {1}"),
    (re.compile(r"\bi(?: really)? (hate|dislike|can't stand|don't like) ([^.,;!?]{2,40})", re.I), "dislikes {1}"),
    (re.compile(r"\bi(?:'m| am) (?:a|an) ([^.,;!?]{2,40})", re.I), "is a {0}"),
    (re.compile(r"\bi have (?:a|an|two|three) ([^.,;!?]{2,40})", re.I), "has {0}"),
    (re.compile(r"\bi live in ([^.,;!?]{2,40})", re.I), "lives in {0}"),
    (re.compile(r"\bi work (?:as|at|in) ([^.,;!?]{2,40})", re.I), "works {0}"),
    (re.compile(r"\b(?:i(?:'m| am) (?:going|planning)|my plan is|i plan) to ([^.,;!?]{2,50})", re.I), "plans to {0}"),
]


def approx_tokens(text: str) -> int:
    """~1.3 tokens per word: close enough to BPE counts for budgeting, and free."""
    return int(len(text.split()) * 1.3) + 1


@dataclass
class ConversationContextManager:
    max_context_length: int = 10
    token_budget: int = 1024
    count_tokens: Callable[[str], int] = approx_tokens
    max_topics: int = 6
    turns: list[dict] = field(default_factory=list)
    preferences: list[str] = field(default_factory=list)
    _topic_counts: Counter = field(default_factory=Counter)
    _compressed: int = 0

    def add(self, role: str, content: str) -> None:
        if role not in ("user", "assistant"):
            raise ValueError(f"role must be user or assistant, got {role!r}")
        self.turns.append({"role": role, "content": content})
        if role == "user":
            for pref in extract_preferences(content):
                if pref not in self.preferences:
                    self.preferences.append(pref)
        self._compress()

    def _compress(self) -> None:
        # Turns that fall out of the window are folded into the memory, never simply dropped.
        while len(self.turns) - self._compressed > self.max_context_length:
            self._topic_counts.update(keywords(self.turns[self._compressed]["content"]))
            self._compressed += 1

    @property
    def topics(self) -> list[str]:
        return [w for w, _ in self._topic_counts.most_common(self.max_topics)]

    @property
    def current_topic(self) -> str | None:
        recent = Counter()
        for t in self.turns[-4:]:
            recent.update(keywords(t["content"]))
        return recent.most_common(1)[0][0] if recent else None

    def memory(self) -> str:
        parts = []
        if self.topics:
            parts.append("earlier topics: " + ", ".join(self.topics))
        if self.preferences:
            parts.append("about the user: " + "; ".join(self.preferences[-8:]))
        return ("Memory of the conversation so far - " + ". ".join(parts) + ".") if parts else ""

    def window(self, budget: int) -> list[dict]:
        out: list[dict] = []
        used = 0
        for t in reversed(self.turns[self._compressed:]):
            cost = self.count_tokens(t["content"])
            if out and used + cost > budget:
                break
            if not out and cost > budget:
                # The newest turn alone is too long: keep its tail rather than nothing.
                words = t["content"].split()
                keep = max(1, int(budget / 1.3))
                out.append({"role": t["role"], "content": " ".join(words[-keep:])})
                used = budget
                break
            out.append(t)
            used += cost
        out.reverse()
        while out and out[0]["role"] != "user" and len(out) > 1:
            out = out[1:]
        return out

    def messages(self, system_prompt: str) -> list[dict]:
        memory = self.memory()
        system = system_prompt + ("\n" + memory if memory else "")
        budget = max(16, self.token_budget - self.count_tokens(system))
        return [{"role": "system", "content": system}] + self.window(budget)

    def total_tokens(self, system_prompt: str) -> int:
        return sum(self.count_tokens(m["content"]) for m in self.messages(system_prompt))


def keywords(text: str) -> list[str]:
    words = re.findall(r"[a-zA-Z][a-zA-Z'-]{2,}", text.lower())
    return [w for w in words if w not in _STOP]


def extract_preferences(text: str) -> list[str]:
    found = []
    for pattern, template in _PREFERENCE_PATTERNS:
        for m in pattern.finditer(text):
            found.append(template.format(*(g.strip() for g in m.groups())))
    return found
