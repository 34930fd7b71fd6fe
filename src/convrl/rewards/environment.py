"""``ConversationEnvironment``: the reward heads as a turn-by-turn environment.

An agent (a policy, a person, a test) plays the assistant. ``reset`` sets the
conversation so far and the persona; every ``step(response)`` scores the reply
with all reward heads in one ``RewardScorer.score`` call, appends it to the
context, optionally appends the next user turn (given, or from a user
simulator), and returns ``(reward, info)``::

    env = ConversationEnvironment(scorer, user_simulator=lambda ctx, persona: "Tell me more.")
    context = env.reset([{"role": "user", "content": "I failed my exam."}], persona)
    reward, info = env.step("I'm sorry, that's hard. What happened?")
    info["heads"]      # {'quality': 0.61, 'personality': 0.32, 'engagement': 0.9, 'relevance': 0.41}
    info["context"]    # the updated conversation, ending with the simulated user turn

A failing head raises ``RewardHeadError`` naming the head (from the scorer);
it never becomes a silent 0. ``score_candidates`` scores several alternative
replies to the current context without advancing (best-of-n, tests).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from convrl.data.personas import Persona
from convrl.rewards.heads import RewardScorer

UserSimulator = Callable[[list[dict], "Persona | None"], "str | None"]


class EpisodeError(RuntimeError):
    """Misuse of the environment (step before reset, step after done, bad conversation)."""


def persona_from_sentences(sentences: list[str], persona_id: str | None = None) -> Persona | None:
    """A persona card from PersonaChat-style sentences ("i love hiking."); None when there are none."""
    facts = [" ".join(str(s).split()) for s in sentences if str(s).strip()]
    if not facts:
        return None
    pid = persona_id or "facts-" + hashlib.sha1("\n".join(facts).encode()).hexdigest()[:10]
    return Persona(persona_id=pid, name=pid, facts=facts)


def normalise_conversation(conversation) -> list[dict]:
    """Messages ``[{role, content}]`` from messages (``content`` or ``text``), a list of strings
    (alternating, starting with the user) or one string (a single user message)."""
    if conversation is None:
        return []
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    out = []
    for i, m in enumerate(conversation):
        if isinstance(m, str):
            out.append({"role": "user" if i % 2 == 0 else "assistant", "content": m})
        elif isinstance(m, dict) and m.get("role") in ("system", "user", "assistant"):
            text = m.get("content", m.get("text"))
            if not isinstance(text, str):
                raise EpisodeError(f"message {i} has no string 'content'")
            out.append({"role": m["role"], "content": text})
        else:
            raise EpisodeError(f"message {i} must be a string or a {{role, content}} dict with role "
                                    f"system|user|assistant, got {m!r:.80}")
    return out


class ConversationEnvironment:
    """Multi-turn conversation scored by the composite reward (see module docstring).

    ``personas`` maps persona ids to cards so ``reset`` may name a persona by id;
    ``max_turns`` ends an episode after that many assistant steps;
    ``max_context_messages`` limits what the heads see (0 = everything), matching
    the RL prompts' ``rl.max_prompt_turns``.
    """

    def __init__(self, scorer: RewardScorer, personas: dict[str, Persona] | list[Persona] | None = None,
                 user_simulator: UserSimulator | None = None, max_turns: int = 10, max_context_messages: int = 0):
        self.scorer = scorer
        if isinstance(personas, list):
            personas = {p.persona_id: p for p in personas}
        self.personas = dict(personas or {})
        self.user_simulator = user_simulator
        self.max_turns = max_turns
        self.max_context_messages = max_context_messages
        self.context: list[dict] | None = None
        self.persona: Persona | None = None
        self.turn = 0
        self.rewards: list[float] = []

    # ------------------------------------------------------------------ episode
    def reset(self, conversation=None, persona: Persona | str | list[str] | None = None) -> list[dict]:
        """Start an episode from ``conversation`` (the context so far) as ``persona``; returns the context."""
        self.context = normalise_conversation(conversation)
        self.persona = self._persona(persona)
        self.turn = 0
        self.rewards = []
        return [dict(m) for m in self.context]

    @property
    def done(self) -> bool:
        return self.context is not None and self.turn >= self.max_turns

    def observe_user(self, text: str) -> None:
        """Append a user turn by hand (instead of a simulator)."""
        self._require_live()
        self.context.append({"role": "user", "content": str(text)})

    def step(self, response: str, user_reply: str | None = None) -> tuple[float, dict]:
        """Score ``response`` against the current context, then advance the conversation.

        Returns ``(composite reward, info)``; info holds ``heads`` (per-head
        scores), ``details`` (fluency, repetition, appropriateness, user
        emotion), ``context`` (the updated conversation), ``user_turn`` (the
        user text appended after the reply, if any), ``turn`` and ``done``.
        """
        self._require_live()
        if self.done:
            raise EpisodeError(f"episode is over after {self.max_turns} turns: call reset()")
        batch = self.scorer.score([self._visible()], [response], [self.persona])
        reward = float(batch.composite[0])
        self.context.append({"role": "assistant", "content": response if isinstance(response, str) else ""})
        self.turn += 1
        self.rewards.append(reward)
        user_turn = user_reply
        if user_turn is None and self.user_simulator is not None and not self.done:
            user_turn = self.user_simulator([dict(m) for m in self.context], self.persona)
        if user_turn is not None:
            self.context.append({"role": "user", "content": str(user_turn)})
        info = {
            "heads": {h: float(v[0]) for h, v in batch.heads.items()},
            "details": {k: _scalar(v[0]) for k, v in batch.details.items()},
            "weights": dict(self.scorer.weights),
            "context": [dict(m) for m in self.context],
            "user_turn": user_turn,
            "turn": self.turn,
            "done": self.done,
        }
        return reward, info

    def score_candidates(self, responses: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Composite and per-head scores of alternative replies to the current context (no advance)."""
        self._require_live()
        ctx = self._visible()
        batch = self.scorer.score([ctx] * len(responses), list(responses), [self.persona] * len(responses))
        return batch.composite, batch.heads

    # ------------------------------------------------------------------ helpers
    def _persona(self, persona) -> Persona | None:
        if persona is None or isinstance(persona, Persona):
            return persona
        if isinstance(persona, str):
            if persona not in self.personas:
                raise EpisodeError(f"unknown persona id '{persona}'; known: {sorted(self.personas)}")
            return self.personas[persona]
        if isinstance(persona, (list, tuple)):
            return persona_from_sentences(list(persona))
        raise EpisodeError(f"persona must be a Persona, an id or a list of sentences, got {type(persona).__name__}")

    def _visible(self) -> list[dict]:
        ctx = self.context
        if self.max_context_messages and len(ctx) > self.max_context_messages:
            ctx = ctx[-self.max_context_messages:]
        return ctx

    def _require_live(self) -> None:
        if self.context is None:
            raise EpisodeError("call reset(conversation, persona) before step()")


def _scalar(x):
    return x.item() if hasattr(x, "item") else x
