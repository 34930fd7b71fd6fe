"""Reward heads and the weighted composite reward.

Heads (each in [0, 1]):

* ``relevance``   cosine similarity of the response with the recent context
                  (or a head trained for next-utterance selection).
* ``personality`` half the cosine with the whole persona card, half the best
                  cosine with one of its sentences (a reply that voices one
                  persona fact matches that fact, not the card's average); with
                  ``personality_style`` (off by default) and a card's traits, a
                  third each of those and the style term (``persona_style``); or
                  a head trained contrastively on persona dialogues.
* ``engagement``  coherence with the user's last turn (an on-topic reply is what
                  people call engaging), invites a reply (question), addresses
                  the user, has substance (content words); 0 for degenerate text
                  (or a regressor trained on human ratings).
* ``quality``     how good the reply is *in its context*: coherence with the
                  user's last turn (cosine, minus what is copied from it), fluency
                  under the frozen base LM as a gate (more predictable than fluent
                  earns nothing), emotional appropriateness (tone prescribed by the
                  persona's emotion map for the user's detected emotion),
                  non-repetition and length sanity; 0 for degenerate text. No
                  length or substance term: on human ratings those became a
                  length proxy (length correlates -0.65 with HolisticEval fluency).

All heads share one encoder pass per distinct text (``SentenceEncoder`` caches);
``score_head`` computes one head alone. Learned heads (:mod:`convrl.rewards.learned`)
plug in through ``RewardScorer(..., learned={"relevance": head, ...})``.
``RewardScorer.trl_reward_funcs()`` exposes each head as a TRL reward callable
(``prompts, completions, **columns -> list[float]``) with matching weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from convrl.config import DEFAULT_WEIGHTS, WEIGHTED_HEADS
from convrl.data.personas import TONES, Persona
from convrl.data.textstats import is_degenerate  # noqa: F401 - re-exported: heads/judges API
from convrl.rewards.fluency import FluencyScorer  # noqa: F401 - re-exported: other code imports it from here
from convrl.rewards.persona_style import TraitStyle
from convrl.rewards.text_signals import (WORD_RE, echo, length_sanity, repetition_rate, substance_score,
                                        without_recited_card)

HEADS = WEIGHTED_HEADS

TONE_PROTOTYPES = {
    "enthusiastic": ["That's wonderful news! I'm so excited for you!",
                     "Wow, that sounds amazing, tell me more!",
                     "Congratulations, that's fantastic! You must be thrilled."],
    "empathetic": ["I'm so sorry you're going through this, that sounds really hard.",
                   "That must be painful. I'm here for you if you want to talk.",
                   "I understand how sad that must feel, it's okay to feel that way."],
    "calming": ["I understand you're frustrated. Let's take a breath and sort this out together.",
                "It's okay, we can fix this step by step, there is no rush.",
                "I hear you. Let's calmly look at what happened and find a solution."],
    "neutral": ["Sure, here is the information you asked for.",
                "The meeting starts at three o'clock in the main room.",
                "That is a common question; the answer depends on the details."],
}



class RewardHeadError(RuntimeError):
    """A reward head failed; the message names the head. Never a silent 0."""


@dataclass
class ScoreBatch:
    heads: dict[str, np.ndarray]
    composite: np.ndarray
    details: dict[str, np.ndarray]


def persona_text(persona: Persona | None) -> str:
    """What the personality head compares replies with: the card, or just the facts of a facts-only card."""
    if persona is None:
        return ""
    if persona.description or persona.traits or persona.style:
        return persona.card_text()
    return " ".join(persona.facts)


def recent_context(context: list[dict], budget: int = 500) -> str:
    """The latest non-system messages, newest first, within ``budget`` characters.

    Newest first because the encoder truncates from the end: the message being
    answered must survive truncation, the oldest may not.
    """
    parts, used = [], 0
    for m in reversed(context):
        if m["role"] == "system":
            continue
        text = m["content"].strip()
        if parts and used + len(text) > budget:
            break
        parts.append(text[-budget:])
        used += len(text) + 1
    return " ".join(parts)


def last_user_text(context: list[dict]) -> str:
    return next((m["content"] for m in reversed(context) if m["role"] == "user"), "")


def coherence(r_emb: np.ndarray, u_emb: np.ndarray, responses: list[str], last_user: list[str]) -> np.ndarray:
    """Cosine of each reply with the user turn it answers, scaled down by what it copies from that turn.

    The last user turn, not the whole recent context: on the training sides of the rated sets the last turn
    agreed better with people (ConvAI2 thumbs +0.17 vs -0.01). The echo discount (``text_signals.echo``: copied
    trigrams, or statements made only of the user's words) keeps RL from learning to parrot the user (a copy has
    cosine 1). No user turn: undefined, neutral 0.5.
    """
    sim = np.clip((r_emb * u_emb).sum(1), 0, 1)
    copied = np.array([echo(r, u) for r, u in zip(responses, last_user)], dtype=np.float32)
    has_user = np.array([bool(u.strip()) for u in last_user], dtype=bool)
    return np.where(has_user, sim * (1 - copied), 0.5).astype(np.float32)


def persona_sentences(persona: Persona | None) -> list[str]:
    """The card's parts the personality head matches one by one: description, style and each fact."""
    if persona is None:
        return []
    parts = [persona.description, persona.style, *persona.facts]
    return [p.strip() for p in parts if p and p.strip()]


def engagement_signals(responses: list[str]) -> np.ndarray:
    """Reply-only engagement signals (question, addresses the user, sane length, not degenerate).

    The untrained engagement head before issue 17's round; now a feature of the learned engagement regressor
    (saved regressors expect exactly this), the head itself is :func:`engagement_head`.
    """
    out = np.zeros(len(responses), dtype=np.float32)
    for i, r in enumerate(responses):
        words = [w.lower() for w in WORD_RE.findall(r)]
        question = 1.0 if "?" in r else 0.0
        addresses = 1.0 if any(w in ("you", "your", "you're", "yours") for w in words) else 0.0
        out[i] = 0.35 * question + 0.2 * addresses + 0.25 * length_sanity(r, 4, 40) + 0.2 * (
            0.0 if is_degenerate(r) else 1.0)
    return out


_SENTENCE_RE = re.compile(r"[^.!?\n]*[.!?\n]*")


def asks_the_user(reply: str) -> bool:
    """A question put to the user ("What do you think?", "How was your day?"): a sentence that ends in "?" and
    has "you"/"your" in it.

    Any "you" used to count: in two of three demo RL seeds 60% of the candidate's replies came to open with
    "You ..." ("You die at the end of the day.", "You're cruel, you're not.") and handed users' insults back.
    Inviting the user to go on is what engages; a statement about them is not.
    """
    for sentence in _SENTENCE_RE.findall(reply):
        if "?" in sentence and {w.lower() for w in WORD_RE.findall(sentence)} & {"you", "your", "yours"}:
            return True
    return False


def engagement_head(responses: list[str], coh: np.ndarray) -> np.ndarray:
    """The untrained engagement head: coherence, a question, a question to the user, substance; 0 if degenerate."""
    out = np.zeros(len(responses), dtype=np.float32)
    for i, r in enumerate(responses):
        if is_degenerate(r):
            continue
        out[i] = 0.45 * coh[i] + 0.2 * float("?" in r) + 0.15 * asks_the_user(r) + 0.2 * substance_score(r)
    return out


class RewardScorer:
    """Scores (context, response, persona) triples with every head at once.

    ``learned`` optionally maps head names (relevance, personality, engagement, quality) to trained heads
    (:mod:`convrl.rewards.learned`, :mod:`convrl.rewards.quality_head`, the cross-encoder) that replace the
    untrained scorer of that head; the untrained score stays in ``details`` as ``<head>_untrained``.
    """

    def __init__(self, encoder, emotion_clf=None, fluency: FluencyScorer | None = None,
                 weights: dict[str, float] | None = None, learned: dict | None = None, personality_style: bool = False):
        self.encoder = encoder
        self.emotion = emotion_clf
        self.fluency = fluency
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.learned = dict(learned or {})
        unknown = set(self.learned) - set(HEADS)
        if unknown:
            raise ValueError(f"learned heads {sorted(unknown)}: only {', '.join(HEADS)} can be learned")
        protos = np.stack([encoder.encode(TONE_PROTOTYPES[t]).mean(0) for t in TONES])
        self._tone_protos = protos / (np.linalg.norm(protos, axis=1, keepdims=True) + 1e-8)
        self.style = TraitStyle(encoder) if personality_style else None
        self._last_key: tuple | None = None
        self._last: ScoreBatch | None = None
        # Set by RL training when its reference pass runs the fluency LM's model (rewards.fluency.ReferenceLogprobs).
        self.reference_logprobs = None

    # -------------------------------------------------------------- heads
    def _run(self, name: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - re-raised with the head named
            raise RewardHeadError(f"reward head '{name}' failed: {type(exc).__name__}: {exc}") from exc

    def tone_probs(self, resp_emb: np.ndarray) -> np.ndarray:
        sims = resp_emb @ self._tone_protos.T
        z = np.exp((sims - sims.max(1, keepdims=True)) * 20.0)
        return z / z.sum(1, keepdims=True)

    def _appropriateness(self, r_emb, last_user, personas):
        emotions = self.emotion.predict(last_user) if self.emotion is not None else ["neutral"] * len(last_user)
        probs = self.tone_probs(r_emb)
        want = [(p.tone_for(e) if p is not None else {"happy": "enthusiastic", "sad": "empathetic",
                                                      "angry": "calming"}.get(e, "neutral"))
                for p, e in zip(personas, emotions)]
        return np.array([probs[i, TONES.index(w)] for i, w in enumerate(want)], dtype=np.float32), emotions

    def _quality(self, responses, contexts, approp, coh, fluency_logprob=None):
        n = len(responses)
        if self.fluency is not None:
            # Given mean log-probs (the RL reference pass) are used as they are; NaN rows run the LM.
            lp = np.full(n, np.nan, dtype=np.float32) if fluency_logprob is None else np.array(fluency_logprob,
                                                                                              dtype=np.float32)
            todo = np.flatnonzero(np.isnan(lp))
            if len(todo):
                lp[todo] = self.fluency.mean_logprob([contexts[i] for i in todo], [responses[i] for i in todo])
            # A gate, not a gradient: a reply more predictable than ~-3.5 nats a token gains nothing. Scored
            # linearly, the most probable (bland, generic) reply won, and the head disagreed with people on
            # "engaging" (Spearman -0.37 on persona chat, issue 17).
            fluency = np.clip((lp + 6.0) / 2.5, 0, 1).astype(np.float32)
        else:
            fluency = np.full(n, 0.5, dtype=np.float32)
        rep = np.array([repetition_rate(r) for r in responses], dtype=np.float32)
        length = np.array([length_sanity(r) for r in responses], dtype=np.float32)
        degenerate = np.array([is_degenerate(r) for r in responses], dtype=bool)
        # Coherence carries half: it is what people's ratings track (issue 17, README "Agreement with people");
        # the tone term is small because without a detected emotion it only measures a neutral register.
        q = 0.5 * coh + 0.2 * fluency + 0.1 * approp + 0.1 * (1 - rep) + 0.1 * length
        return np.where(degenerate, 0.0, q).astype(np.float32), fluency, rep

    def _personality(self, r_emb, p_emb, personas, no_persona, responses, last_user):
        """Half the card cosine, half the best sentence cosine; a third each with the style term where the card has
        traits it reads (``persona_style``). 0 for the card recited to the user ("You're Alex, a technical ...")."""
        card = np.clip((r_emb * p_emb).sum(1), 0, 1)
        best = card.copy()
        by_card: dict[tuple, list[int]] = {}
        for i, p in enumerate(personas):
            if p is not None:
                by_card.setdefault(tuple(persona_sentences(p)), []).append(i)
        for sents, idx in by_card.items():
            if sents:
                best[idx] = np.clip((r_emb[idx] @ self.encoder.encode(list(sents)).T).max(1), 0, 1)
        out = 0.5 * card + 0.5 * best
        if self.style is not None:
            style = self.style.score(r_emb, personas)
            out = np.where(np.isnan(style), out, (card + best + np.nan_to_num(style)) / 3)
        out = without_recited_card(out, responses, personas, last_user)
        return np.where(no_persona, 0.5, out).astype(np.float32)

    @staticmethod
    def _clean(contexts, responses, personas):
        if not (len(contexts) == len(responses) == len(personas)):
            raise ValueError("contexts, responses and personas must have the same length")
        return [r if isinstance(r, str) else "" for r in responses]

    def score(self, contexts: list[list[dict]], responses: list[str],
              personas: list[Persona | None], fluency_logprob=None) -> ScoreBatch:
        """Every head for every triple: one encoder pass over the distinct texts, shared by all heads.

        ``fluency_logprob`` optionally gives each reply's mean token log-prob
        under the fluency LM (NaN where unknown), e.g. from the RL reference pass.
        """
        responses = self._clean(contexts, responses, personas)
        n = len(responses)
        last_user = [last_user_text(c) for c in contexts]
        recent = [recent_context(c) for c in contexts]
        cards = [persona_text(p) for p in personas]
        # The emotion classifier reads the last user turn through the same encoder: encoding it in the
        # same pass lets its embeddings come from the cache instead of a second forward.
        texts = responses + recent + cards + last_user
        emb = self._run("encoder", self.encoder.encode, texts)
        r_emb, c_emb, p_emb, u_emb = emb[:n], emb[n:2 * n], emb[2 * n:3 * n], emb[3 * n:]
        no_persona = np.array([p is None for p in personas], dtype=bool)

        heads, details = {}, {}
        heads["relevance"] = self._run("relevance", lambda: np.clip((r_emb * c_emb).sum(1), 0, 1))
        # No persona card: the head is undefined, score it neutrally rather than 0.
        heads["personality"] = self._run("personality", self._personality, r_emb, p_emb, personas, no_persona,
                                         responses, last_user)
        coh = self._run("coherence", coherence, r_emb, u_emb, responses, last_user)
        heads["engagement"] = self._run("engagement", engagement_head, responses, coh)
        approp, user_emotions = self._run("emotion", self._appropriateness, r_emb, last_user, personas)
        heads["quality"], fluency, rep = self._run("quality", self._quality, responses, contexts, approp, coh,
                                                   fluency_logprob)
        if self.learned:
            inputs = {"context": c_emb, "response": r_emb, "persona": p_emb, "responses": responses,
                      "no_persona": no_persona, "context_text": recent, "persona_text": cards, "user": u_emb,
                      "user_text": last_user}
            for name, model in self.learned.items():
                details[f"{name}_untrained"] = heads[name].astype(np.float32)
                heads[name] = self._run(name, model.score, inputs)
        heads = {h: np.asarray(heads[h], dtype=np.float32) for h in HEADS}
        if "personality" in self.learned:  # a learned head pays for the card's words as the untrained one did
            heads["personality"] = without_recited_card(heads["personality"], responses, personas, last_user)
        for name, arr in heads.items():
            if not np.all(np.isfinite(arr)):
                raise RewardHeadError(f"reward head '{name}' produced non-finite scores")
        details.update({"fluency": fluency, "repetition": rep, "appropriateness": approp, "coherence": coh,
                        "user_emotion": np.array(user_emotions)})
        return ScoreBatch(heads, self.composite(heads), details)

    def score_head(self, head: str, contexts: list[list[dict]], responses: list[str],
                   personas: list[Persona | None], fluency_logprob=None) -> np.ndarray:
        """One head alone, encoding only what it needs (debugging; the unshared baseline of the benchmark)."""
        if head not in HEADS:
            raise ValueError(f"unknown head '{head}'; heads: {HEADS}")
        responses = self._clean(contexts, responses, personas)
        last_user = [last_user_text(c) for c in contexts]
        r_emb = self._run("encoder", self.encoder.encode, responses)
        if head in ("engagement", "quality") and head not in self.learned:
            u_emb = self._run("encoder", self.encoder.encode, last_user)
            coh = self._run("coherence", coherence, r_emb, u_emb, responses, last_user)
            if head == "engagement":
                return self._run(head, engagement_head, responses, coh)
            approp, _ = self._run("emotion", self._appropriateness, r_emb, last_user, personas)
            return self._run(head, self._quality, responses, contexts, approp, coh, fluency_logprob)[0]
        needs_context = head != "personality" or head in self.learned
        needs_persona = head == "personality"
        recent = [recent_context(c) for c in contexts]
        cards = [persona_text(p) for p in personas]
        c_emb = self._run("encoder", self.encoder.encode, recent) if needs_context else None
        p_emb = self._run("encoder", self.encoder.encode, cards) if needs_persona else None
        u_emb = self._run("encoder", self.encoder.encode, last_user) if head == "quality" else None
        no_persona = np.array([p is None for p in personas], dtype=bool)
        if head in self.learned:
            out = self._run(head, self.learned[head].score, {"context": c_emb, "response": r_emb, "persona": p_emb,
                                                             "responses": responses, "no_persona": no_persona,
                                                             "context_text": recent, "persona_text": cards,
                                                             "user": u_emb, "user_text": last_user})
            return without_recited_card(out, responses, personas, last_user) if head == "personality" else out
        if head == "relevance":
            return np.clip((r_emb * c_emb).sum(1), 0, 1).astype(np.float32)
        return self._run(head, self._personality, r_emb, p_emb, personas, no_persona, responses, last_user)

    def composite(self, heads: dict[str, np.ndarray]) -> np.ndarray:
        total = sum(self.weights.values())
        return sum(self.weights.get(h, 0.0) * heads[h] for h in HEADS) / total

    # -------------------------------------------------------------- TRL glue
    def score_cached(self, contexts, responses, personas, completion_ids=None) -> ScoreBatch:
        """TRL calls each reward function on the same batch; score it once."""
        key = (tuple(responses), tuple(str(c[-1]) for c in contexts), tuple(p.persona_id if p else "" for p in personas))
        if key != self._last_key:
            self._last = self.score(contexts, responses, personas, self.reference_fluency(completion_ids))
            self._last_key = key
            self.last_batch = (contexts, responses, personas, self._last)
        return self._last

    def reference_fluency(self, completion_ids, spans=None) -> np.ndarray | None:
        """Mean log-probs of the batch's replies from ``reference_logprobs`` (set by the RL trainer), or None.

        ``spans``: per completion, the token spans of its replies (multi-turn), see ``ReferenceLogprobs.reply_means``.
        """
        if self.fluency is None or self.reference_logprobs is None or completion_ids is None:
            return None
        return self.reference_logprobs.reply_means(completion_ids, spans)

    def last_batch_table(self):
        """The most recent scored batch as rows (for sample tables during training)."""
        import pandas as pd

        if getattr(self, "last_batch", None) is None:
            return pd.DataFrame()
        contexts, responses, personas, batch = self.last_batch
        rows = []
        for i, (c, r, p) in enumerate(zip(contexts, responses, personas)):
            rows.append({"persona": p.persona_id if p else "", "user": c[-1]["content"][:300], "response": r,
                         "composite": float(batch.composite[i]),
                         **{h: float(batch.heads[h][i]) for h in HEADS}})
        return pd.DataFrame(rows)

    def trl_reward_funcs(self, personas_by_id: dict[str, Persona]):
        """One callable per head (in HEADS order) and the matching weights for GRPOConfig."""
        funcs = []
        for head in HEADS:
            def f(prompts, completions, head=head, **kwargs):
                contexts = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}] for p in prompts]
                responses = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
                pids = kwargs.get("persona_id") or [None] * len(responses)
                personas = [personas_by_id.get(pid) if pid else None for pid in pids]
                batch = self.score_cached(contexts, responses, personas, kwargs.get("completion_ids"))
                return [float(x) for x in batch.heads[head]]

            f.__name__ = head
            funcs.append(f)
        weights = [self.weights.get(h, 0.0) for h in HEADS]
        return funcs, weights

