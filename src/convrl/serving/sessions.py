"""Per-session state of ``convrl serve``: the variant a session is routed to, its persona, its context.

A session id comes from the request (``X-Session-Id`` header, or the body's
``session_id`` / ``user``); a request without one is a session of its own.
Routing hashes the session id, so a session stays on one variant for its whole
life, across requests and server restarts, and ``challenger_fraction`` of
sessions go to the challenger. Each session has a persona card and a
:class:`~convrl.data.context.ConversationContextManager`, as in ``convrl chat``:
the prompt is the persona's system prompt (plus the client's own system
message, if any, and the context memory) and the recent turns within the
token budget.

Clients may send the whole history every time (the OpenAI convention) or only
the new user message: when the stored turns are a prefix of the request's
turns only the new ones are added; a single user message continues the stored
conversation; anything else replaces it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from convrl.data.personas import Persona, PersonaError, bundled_persona_names, load_persona
from convrl.data.context import ConversationContextManager

CHAMPION, CHALLENGER = "champion", "challenger"


def route(session_id: str, challenger_fraction: float, has_challenger: bool) -> str:
    """The variant of a session: a stable hash of its id against the challenger's share."""
    if not has_challenger or challenger_fraction <= 0:
        return CHAMPION
    bucket = int(hashlib.sha256(session_id.encode()).hexdigest()[:12], 16) / float(16 ** 12)
    return CHALLENGER if bucket < challenger_fraction else CHAMPION


@dataclass
class Session:
    session_id: str
    variant: str
    persona: Persona
    ctx: ConversationContextManager
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.time)
    turns: int = 0

    def prompt(self, messages: list[dict]) -> list[dict]:
        """Fold the request's messages into the session and return what the model sees."""
        system = [m["content"] for m in messages if m["role"] == "system"]
        convo = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
        stored = self.ctx.turns
        if len(convo) > len(stored) and convo[:len(stored)] == stored:
            new = convo[len(stored):]
        elif len(convo) == 1:
            new = convo
        else:
            self.ctx = ConversationContextManager(max_context_length=self.ctx.max_context_length,
                                                  token_budget=self.ctx.token_budget)
            new = convo
        for m in new:
            self.ctx.add(m["role"], m["content"])
        return self.ctx.messages(self.persona.system_prompt() + "".join("\n" + s for s in system))

    def add_reply(self, text: str) -> None:
        self.ctx.add("assistant", text)
        self.turns += 1
        self.last_used = time.time()


class SessionStore:
    """Sessions by id, least recently used dropped beyond ``max_sessions``; personas loaded once."""

    def __init__(self, default_persona: str, context_turns: int, token_budget: int, max_sessions: int,
                 challenger_fraction: float, has_challenger: bool):
        self.default_persona = load_persona(default_persona)
        self.context_turns = context_turns
        self.token_budget = token_budget
        self.max_sessions = max_sessions
        self.challenger_fraction = challenger_fraction
        self.has_challenger = has_challenger
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.personas: dict[str, Persona] = {}
        self.lock = threading.Lock()

    def persona(self, name: str | None) -> Persona:
        """A bundled persona card (or the configured default) by name; requests never name server paths."""
        if not name or name == self.default_persona.persona_id:
            return self.default_persona
        if name not in self.personas:
            if name not in bundled_persona_names():
                raise PersonaError(f"unknown persona {name!r}; available: "
                                   f"{', '.join(sorted({*bundled_persona_names(), self.default_persona.persona_id}))}")
            self.personas[name] = load_persona(name)
        return self.personas[name]

    def new_context(self) -> ConversationContextManager:
        return ConversationContextManager(max_context_length=self.context_turns, token_budget=self.token_budget)

    def get(self, session_id: str, persona: str | None = None, variant: str | None = None) -> Session:
        """The session (created on first use; ``variant`` only pins a new session, routing does otherwise)."""
        card = self.persona(persona) if persona else None
        with self.lock:
            s = self.sessions.get(session_id)
            if s is None:
                s = Session(session_id, variant or route(session_id, self.challenger_fraction, self.has_challenger),
                            card or self.default_persona, self.new_context())
                self.sessions[session_id] = s
                while len(self.sessions) > self.max_sessions:
                    self.sessions.popitem(last=False)
            else:
                self.sessions.move_to_end(session_id)
                if card is not None:
                    s.persona = card
            return s

    def __len__(self) -> int:
        return len(self.sessions)
