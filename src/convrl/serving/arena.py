"""The arena: a person chats with two variants side by side, blind, and picks the better reply.

``GET /arena`` serves the page (``arena.html``); its script calls::

    POST /arena/api/turn    {"arena_id", "message", "persona"?} -> {"turn", "a", "b"}
    POST /arena/api/choice  {"arena_id", "turn", "choice": "a"|"b"|"tie"} -> {"recorded": true}

Which variant is "A" is drawn at random per arena session and never sent to
the page. Both variants answer the same prompt (persona system prompt plus the
shared history); after the choice the chosen reply (A's on a tie) joins the
history, so the next prompt is again the same for both. Each choice is stored
with both replies and the prompt as a preference (``traces.log_preference``,
through the buffered writer); each reply is also traced as a served turn with
``source=arena``. The arena needs a challenger beside the champion.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from convrl.data.personas import PersonaError
from convrl.serving.batching import GenRequest
from convrl.serving.sessions import CHALLENGER, CHAMPION, Session


class ArenaTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arena_id: str = Field(min_length=8, max_length=100)
    message: str = Field(min_length=1, max_length=4000)
    persona: str | None = None


class ArenaChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arena_id: str = Field(min_length=8, max_length=100)
    turn: int = Field(ge=1)
    choice: Literal["a", "b", "tie"]


@dataclass
class Pending:
    turn: int
    prompt: list[dict]
    replies: dict[str, str]  # side -> reply


@dataclass
class Arena:
    session: Session  # shared history and persona; its variant is unused
    sides: dict[str, str]  # "a"/"b" -> variant
    turn: int = 0
    pending: Pending | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def add_arena(app: FastAPI, server) -> None:
    from convrl.serving.app import ApiError

    arenas: dict[str, Arena] = {}

    def arena_for(arena_id: str, persona: str | None) -> Arena:
        if CHALLENGER not in server.variants:
            raise ApiError(409, "the arena needs two variants; this server has no challenger (register one, or "
                           "set serve.challenger)", code="no_challenger")
        a = arenas.get(arena_id)
        if a is None:
            while len(arenas) >= server.cfg.serve.max_sessions:
                arenas.pop(next(iter(arenas)))
            variants = [CHAMPION, CHALLENGER]
            random.shuffle(variants)
            try:
                session = server.sessions.get(f"arena-{arena_id}", persona, CHAMPION)
            except PersonaError as exc:
                raise ApiError(400, str(exc), "persona") from exc
            a = arenas[arena_id] = Arena(session, {"a": variants[0], "b": variants[1]})
        return a

    @app.get("/arena", response_class=HTMLResponse)
    async def page():
        return (resources.files("convrl.serving") / "arena.html").read_text()

    @app.post("/arena/api/turn")
    async def turn(body: ArenaTurn):
        a = arena_for(body.arena_id, body.persona)
        async with a.lock:
            if a.pending is not None:
                raise ApiError(409, "pick the better reply (or tie) before sending the next message",
                               code="choice_pending")
            s = a.session
            prompt = s.prompt([{"role": "user", "content": body.message}])
            reqs = {side: GenRequest(messages=prompt, max_new_tokens=server.cfg.serve.max_new_tokens,
                                     temperature=server.cfg.serve.temperature, prefix=s.persona.system_prompt())
                    for side in a.sides}
            futures = {side: asyncio.wrap_future(server.engine.submit(a.sides[side], r)) for side, r in reqs.items()}
            results = dict(zip(futures, await asyncio.gather(*futures.values())))
            a.turn += 1
            a.pending = Pending(a.turn, prompt, {side: r.text for side, r in results.items()})
            for side, res in results.items():
                server.record_turn(s, a.sides[side], reqs[side], res, f"arena-{uuid.uuid4().hex}", remember=False,
                                   source="arena")
        return {"turn": a.turn, "a": results["a"].text, "b": results["b"].text}

    @app.post("/arena/api/choice")
    async def choice(body: ArenaChoice):
        a = arenas.get(body.arena_id)
        if a is None:
            raise ApiError(404, f"no arena session {body.arena_id!r}; send a message first", "arena_id")
        async with a.lock:
            p = a.pending
            if p is None or p.turn != body.turn:
                raise ApiError(409, f"turn {body.turn} has no replies waiting for a choice", "turn")
            v = server.variants
            server.writer.submit(
                "preference", session_id=a.session.session_id, prompt_messages=p.prompt, reply_a=p.replies["a"],
                reply_b=p.replies["b"], variant_a=a.sides["a"], variant_b=a.sides["b"], choice=body.choice,
                persona=a.session.persona.persona_id, model_version_a=v[a.sides["a"]].version,
                model_version_b=v[a.sides["b"]].version)
            a.session.add_reply(p.replies["b" if body.choice == "b" else "a"])
            a.pending = None
        return {"recorded": True, "turn": body.turn}
