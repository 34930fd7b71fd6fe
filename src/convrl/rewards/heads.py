"""Reward heads and the weighted composite reward.

Heads (each in [0, 1]):

* ``relevance``   cosine similarity of the response with the recent context.
* ``personality`` cosine similarity of the response with the persona card.
* ``engagement``  implicit-engagement signals: the reply invites a reply
                  (question), addresses the user, has a sane length, warm tone.
* ``quality``     fluency under the frozen base LM (length-normalised
                  log-likelihood), non-repetition, length sanity and emotional
                  appropriateness (tone prescribed by the persona's emotion map
                  for the user's detected emotion), gated to 0 for degenerate text.

All heads share one encoder pass per distinct text (``SentenceEncoder`` caches).
``RewardScorer.trl_reward_funcs()`` exposes each head as a TRL reward callable
(``prompts, completions, **columns -> list[float]``) with matching weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from convrl.data.personas import TONES, Persona

HEADS = ("quality", "personality", "engagement", "relevance")

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

_WORD = re.compile(r"\w+", re.UNICODE)


class RewardHeadError(RuntimeError):
    """A reward head failed; the message names the head. Never a silent 0."""


@dataclass
class ScoreBatch:
    heads: dict[str, np.ndarray]
    composite: np.ndarray
    details: dict[str, np.ndarray]


def repetition_rate(text: str) -> float:
    """Share of repeated word trigrams (0 = none, 1 = all repeats)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_degenerate(text: str) -> bool:
    stripped = text.strip()
    if not stripped:
        return True
    letters = sum(ch.isalpha() for ch in stripped)
    return letters < 2 or (len(stripped) > 20 and letters / len(stripped) < 0.3)


def length_sanity(text: str, lo: int = 3, hi: int = 60) -> float:
    n = len(_WORD.findall(text))
    if n < lo:
        return n / lo
    if n > hi:
        return max(0.0, 1.0 - (n - hi) / hi)
    return 1.0


class FluencyScorer:
    """Length-normalised log-likelihood of the reply under a frozen causal LM."""

    def __init__(self, model_dir: str, batch_size: int = 8, max_tokens: int = 256, dtype: torch.dtype | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype is None:
            from convrl.rl.grpo import bf16_supported

            # A frozen scorer loses nothing that matters in bf16 and runs twice as fast where the CPU has bf16 units.
            dtype = torch.bfloat16 if bf16_supported() else torch.float32
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        self.batch_size = batch_size
        self.max_tokens = max_tokens

    @torch.inference_mode()
    def mean_logprob(self, user_texts: list[str], responses: list[str]) -> np.ndarray:
        out = np.zeros(len(responses), dtype=np.float32)
        for i in range(0, len(responses), self.batch_size):
            ids, masks = [], []
            for u, r in zip(user_texts[i:i + self.batch_size], responses[i:i + self.batch_size]):
                prefix = self.tok.apply_chat_template([{"role": "user", "content": u[-500:]}],
                                                      tokenize=False, add_generation_prompt=True)
                p_ids = self.tok(prefix, add_special_tokens=False)["input_ids"][-64:]
                r_ids = self.tok(r, add_special_tokens=False)["input_ids"][: self.max_tokens]
                ids.append(p_ids + r_ids)
                masks.append([0] * len(p_ids) + [1] * len(r_ids))
            width = max(len(x) for x in ids)
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
            inp = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
            att = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            tgt_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])[:, 1:].float()
            logits = self.model(input_ids=inp, attention_mask=att).logits[:, :-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, inp[:, 1:].unsqueeze(-1)).squeeze(-1)
            denom = tgt_mask.sum(1)
            mean = (lp * tgt_mask).sum(1) / denom.clamp(min=1)
            mean = torch.where(denom > 0, mean, torch.full_like(mean, -10.0))
            out[i:i + len(ids)] = mean.numpy()
        return out


class RewardScorer:
    """Scores (context, response, persona) triples with every head at once."""

    def __init__(self, encoder, emotion_clf=None, fluency: FluencyScorer | None = None,
                 weights: dict[str, float] | None = None):
        self.encoder = encoder
        self.emotion = emotion_clf
        self.fluency = fluency
        self.weights = dict(weights or {"quality": 0.4, "personality": 0.25, "engagement": 0.2,
                                        "relevance": 0.15})
        self._tone_protos = {t: encoder.encode(TONE_PROTOTYPES[t]).mean(0) for t in TONES}
        self._last_key: tuple | None = None
        self._last: ScoreBatch | None = None

    # -------------------------------------------------------------- heads
    def _run(self, name: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - re-raised with the head named
            raise RewardHeadError(f"reward head '{name}' failed: {type(exc).__name__}: {exc}") from exc

    def tone_probs(self, resp_emb: np.ndarray) -> np.ndarray:
        protos = np.stack([self._tone_protos[t] / (np.linalg.norm(self._tone_protos[t]) + 1e-8) for t in TONES])
        sims = resp_emb @ protos.T
        z = np.exp((sims - sims.max(1, keepdims=True)) * 20.0)
        return z / z.sum(1, keepdims=True)

    def score(self, contexts: list[list[dict]], responses: list[str],
              personas: list[Persona | None]) -> ScoreBatch:
        if not (len(contexts) == len(responses) == len(personas)):
            raise ValueError("contexts, responses and personas must have the same length")
        n = len(responses)
        responses = [r if isinstance(r, str) else "" for r in responses]
        last_user = [next((m["content"] for m in reversed(c) if m["role"] == "user"), "") for c in contexts]
        recent = [" ".join(m["content"] for m in c if m["role"] != "system")[-1000:] for c in contexts]
        cards = [p.card_text() if p is not None else "" for p in personas]
        emb = self._run("encoder", self.encoder.encode, responses + recent + cards)
        r_emb, c_emb, p_emb = emb[:n], emb[n:2 * n], emb[2 * n:]

        relevance = self._run("relevance", lambda: np.clip((r_emb * c_emb).sum(1), 0, 1))

        def personality():
            sims = np.clip((r_emb * p_emb).sum(1), 0, 1)
            # No persona card: the head is undefined, score it neutrally rather than 0.
            return np.where([p is None for p in personas], 0.5, sims)

        personality_s = self._run("personality", personality)

        def engagement():
            out = np.zeros(n, dtype=np.float32)
            for i, r in enumerate(responses):
                words = [w.lower() for w in _WORD.findall(r)]
                question = 1.0 if "?" in r else 0.0
                addresses = 1.0 if any(w in ("you", "your", "you're", "yours") for w in words) else 0.0
                out[i] = 0.35 * question + 0.2 * addresses + 0.25 * length_sanity(r, 4, 40) + 0.2 * (
                    0.0 if is_degenerate(r) else 1.0)
            return out

        engagement_s = self._run("engagement", engagement)

        def appropriateness():
            emotions = self.emotion.predict(last_user) if self.emotion is not None else ["neutral"] * n
            probs = self.tone_probs(r_emb)
            want = [(p.tone_for(e) if p is not None else {"happy": "enthusiastic", "sad": "empathetic",
                                                          "angry": "calming"}.get(e, "neutral"))
                    for p, e in zip(personas, emotions)]
            return np.array([probs[i, TONES.index(w)] for i, w in enumerate(want)], dtype=np.float32), emotions

        approp, user_emotions = self._run("emotion", appropriateness)

        def quality():
            if self.fluency is not None:
                lp = self.fluency.mean_logprob(last_user, responses)
                fluency = np.clip((lp + 6.0) / 5.0, 0, 1)
            else:
                fluency = np.full(n, 0.5, dtype=np.float32)
            rep = np.array([repetition_rate(r) for r in responses], dtype=np.float32)
            length = np.array([length_sanity(r) for r in responses], dtype=np.float32)
            degenerate = np.array([is_degenerate(r) for r in responses])
            q = 0.35 * fluency + 0.2 * (1 - rep) + 0.15 * length + 0.3 * approp
            return np.where(degenerate, 0.0, q).astype(np.float32), fluency, rep

        quality_s, fluency_s, rep_s = self._run("quality", quality)
        heads = {"quality": quality_s, "personality": personality_s.astype(np.float32),
                 "engagement": engagement_s, "relevance": relevance.astype(np.float32)}
        for name, arr in heads.items():
            if not np.all(np.isfinite(arr)):
                raise RewardHeadError(f"reward head '{name}' produced non-finite scores")
        composite = self.composite(heads)
        return ScoreBatch(heads, composite, {"fluency": fluency_s, "repetition": rep_s,
                                             "appropriateness": approp,
                                             "user_emotion": np.array(user_emotions)})

    def composite(self, heads: dict[str, np.ndarray]) -> np.ndarray:
        total = sum(self.weights.values())
        return sum(self.weights.get(h, 0.0) * heads[h] for h in HEADS) / total

    # -------------------------------------------------------------- TRL glue
    def score_cached(self, contexts, responses, personas) -> ScoreBatch:
        """TRL calls each reward function on the same batch; score it once."""
        key = (tuple(responses), tuple(str(c[-1]) for c in contexts), tuple(p.persona_id if p else "" for p in personas))
        if key != self._last_key:
            self._last = self.score(contexts, responses, personas)
            self._last_key = key
            self.last_batch = (contexts, responses, personas, self._last)
        return self._last

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
                return [float(x) for x in self.score_cached(contexts, responses, personas).heads[head]]

            f.__name__ = head
            funcs.append(f)
        weights = [self.weights.get(h, 0.0) for h in HEADS]
        return funcs, weights

