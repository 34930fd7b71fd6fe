"""Multi-turn GRPO rollouts through TRL's ``rollout_func``, with a simulated user between policy turns.

One rollout is ``rl.turns`` policy turns. After each policy turn but the last,
the user answers: the frozen base model role-playing the user (a profile built
from the conversation: who opened it, how they feel, what they want), or, with
``rl.user_simulator: logged``, the next user turn logged in the data (the
simulator fills in where the log ends). The training sequence is the prompt
followed by every turn; user turns and chat-template glue carry ``env_mask``
0, so only the policy's own tokens enter the loss::

    prompt | a1 <end> <user> u1 <end> <assistant> a2 <end> ...
             111 00000000000000000000000000000000 111 ...

Each assistant turn is scored by every reward head with the context it was
written in; ``conversation_reward_funcs`` aggregates the per-turn scores
(``mean``, ``discounted`` or ``final``) and adds a whole-conversation
``consistency`` term (stable persona score across turns, no repeating oneself).

    rollout = MultiTurnRollout(turns=2, user=SimulatedUser(base_dir), tokenizer=tok)
    GRPOTrainer(..., rollout_func=rollout, reward_funcs=conversation_reward_funcs(scorer, personas, ...)[0])
"""

from __future__ import annotations

import re

import numpy as np

from convrl.data.personas import Persona
from convrl.eval.selfplay import UserProfile, _clean_user, user_system_prompt, user_view
from convrl.rewards.heads import HEADS

A_MARK, U_MARK = "ASSISTANTTURNMARK", "USERTURNMARK"
FALLBACK_USER = "Tell me more."


class TurnTemplate:
    """The chat template's glue between an assistant turn and the next one, as token ids."""

    def __init__(self, tok):
        first = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": A_MARK}]
        t1 = tok.apply_chat_template(first, tokenize=False)
        t2 = tok.apply_chat_template(first + [{"role": "user", "content": U_MARK}], tokenize=False,
                                     add_generation_prompt=True)
        if not t2.startswith(t1) or A_MARK not in t1 or U_MARK not in t2:
            raise ValueError("multi-turn rollouts need a chat template that renders a conversation by appending "
                             "turns (ChatML, Llama-3, ...); this tokenizer's template rewrites earlier turns. "
                             "Use rl.turns: 1 with this model.")
        self.tok = tok
        self.after_assistant = t1[t1.index(A_MARK) + len(A_MARK):]
        self.user_block = t2[len(t1):]

    def between(self, last_generated_id: int | None, user_text: str) -> list[int]:
        """Ids from the end of a generated assistant turn to the start of the next one."""
        glue = self.after_assistant
        if last_generated_id is not None:
            # A turn that stopped on EOS already holds the template's end-of-turn token.
            eos_text = self.tok.convert_ids_to_tokens(last_generated_id)
            if isinstance(eos_text, str) and eos_text and glue.startswith(eos_text):
                glue = glue[len(eos_text):]
        return self.tok(glue + self.user_block.replace(U_MARK, user_text), add_special_tokens=False)["input_ids"]


def user_profile(prompt: list[dict], emotion: str = "neutral") -> UserProfile:
    """A simulated user for a logged conversation: whoever opened it, feeling what they felt, wanting to go on."""
    users = [m["content"] for m in prompt if m["role"] == "user"]
    opener = users[0][:200] if users else "Hi"
    feeling = f"who feels {emotion}" if emotion and emotion != "neutral" else "in a normal mood"
    return UserProfile("logged", f"a person {feeling}, who started this chat by saying \"{opener}\"",
                       "keep talking about your topic and react honestly to what the assistant just said",
                       opener, "")


class SimulatedUser:
    """The frozen base model playing the user (``eval.selfplay``'s prompt and role swap), batched."""

    def __init__(self, model_dir: str, max_new_tokens: int = 32, context_messages: int = 6,
                 temperature: float = 0.8, dtype=None, seed: int = 0):
        import torch

        from convrl.rl.generation import Generator
        from convrl.runtime import bf16_supported

        if dtype is None:
            dtype = torch.bfloat16 if bf16_supported() else torch.float32
        self.gen = Generator(model_dir, dtype=dtype)
        self.max_new_tokens, self.context_messages = max_new_tokens, context_messages
        self.temperature, self.seed, self.calls = temperature, seed, 0

    def reply(self, histories: list[list[dict]], profiles: list[UserProfile]) -> list[str]:
        views = [[{"role": "system", "content": user_system_prompt(p)}]
                 + user_view([m for m in h if m["role"] != "system"], self.context_messages)
                 for h, p in zip(histories, profiles)]
        self.calls += 1
        said = self.gen.generate(views, max_new_tokens=self.max_new_tokens, batch_size=max(1, len(views)),
                                 do_sample=True, temperature=self.temperature, seed=self.seed + 7919 * self.calls)
        return [_clean_user(s, FALLBACK_USER) for s in said]


class MultiTurnRollout:
    """``rollout_func(prompts, trainer)`` for GRPOTrainer: ``turns`` policy turns, user turns masked out."""

    def __init__(self, turns: int, user: SimulatedUser | None, tokenizer, user_simulator: str = "model"):
        if turns < 2:
            raise ValueError("MultiTurnRollout is for rl.turns >= 2; single-turn GRPO needs no rollout_func")
        if user_simulator not in ("model", "logged"):
            raise ValueError(f"rl.user_simulator must be 'model' or 'logged', got {user_simulator!r}")
        if user is None and user_simulator == "model":
            raise ValueError("rl.user_simulator 'model' needs a SimulatedUser")
        self.turns, self.user, self.mode = turns, user, user_simulator
        self.template = TurnTemplate(tokenizer)
        self.tok = tokenizer
        # Rows of the dataset batch, looked up by prompt so logged user turns and emotions follow each row.
        self.row_info: dict[str, dict] = {}

    def register_rows(self, rows: list[dict]) -> None:
        for r in rows:
            self.row_info[_prompt_key(r["prompt"])] = r

    def __call__(self, prompts: list[list[dict]], trainer) -> dict:
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
        prompt_ids = [list(p) for p in prompt_ids]
        n = len(prompts)
        completion = [[] for _ in range(n)]
        env_mask = [[] for _ in range(n)]
        histories = [[dict(m) for m in p] for p in prompts]
        turns = [[] for _ in range(n)]
        infos = [self.row_info.get(_prompt_key(p), {}) for p in prompts]
        for t in range(self.turns):
            ids = [p + c for p, c in zip(prompt_ids, completion)]
            generated = trainer._generate_single_turn(ids, None, {}, trainer.num_generations)
            generated = generated[0] if isinstance(generated, tuple) else generated
            texts = self.tok.batch_decode(generated, skip_special_tokens=True)
            for i, (g, text) in enumerate(zip(generated, texts)):
                span = [len(completion[i]), len(completion[i]) + len(g)]  # where the turn's tokens sit
                turns[i].append({"context": [dict(m) for m in histories[i]], "response": text.strip(), "span": span})
                histories[i].append({"role": "assistant", "content": text.strip()})
                completion[i] += list(g)
                env_mask[i] += [1] * len(g)
            if t == self.turns - 1:
                break
            user_texts = self._user_turns(histories, infos, t)
            for i, (g, u) in enumerate(zip(generated, user_texts)):
                glue = self.template.between(g[-1] if g and g[-1] in trainer.eos_token_ids else None, u)
                completion[i] += glue
                env_mask[i] += [0] * len(glue)
                histories[i].append({"role": "user", "content": u})
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "logprobs": None, "env_mask": env_mask,
                "turns": turns}

    def _user_turns(self, histories, infos, t: int) -> list[str]:
        out: list[str | None] = [None] * len(histories)
        if self.mode == "logged":
            for i, info in enumerate(infos):
                logged = info.get("next_user_turns") or []
                if t < len(logged) and str(logged[t]).strip():
                    out[i] = str(logged[t]).strip()
        todo = [i for i, u in enumerate(out) if u is None]
        if todo:
            if self.user is None:
                out = [u if u is not None else FALLBACK_USER for u in out]
            else:
                said = self.user.reply([histories[i] for i in todo],
                                       [user_profile(histories[i], infos[i].get("user_emotion", "neutral"))
                                        for i in todo])
                for i, s in zip(todo, said):
                    out[i] = s
        return out


def _prompt_key(prompt) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt) if isinstance(prompt, list) else str(prompt)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def self_repetition(responses: list[str], threshold: float = 0.6) -> float:
    """Share of turns after the first whose word set overlaps an earlier own turn by >= ``threshold`` (Jaccard)."""
    if len(responses) < 2:
        return 0.0
    seen, repeated = [_words(responses[0])], 0
    for r in responses[1:]:
        w = _words(r)
        if w and any(len(w & s) / max(1, len(w | s)) >= threshold for s in seen):
            repeated += 1
        seen.append(w)
    return repeated / (len(responses) - 1)


def aggregate_turns(per_turn: np.ndarray, how: str, discount: float = 0.9) -> float:
    """Per-turn scores -> one conversation score: mean, discounted (normalised, early turns weigh more) or final."""
    if how == "mean":
        return float(np.mean(per_turn))
    if how == "final":
        return float(per_turn[-1])
    if how == "discounted":
        w = discount ** np.arange(len(per_turn))
        return float((w * per_turn).sum() / w.sum())
    raise ValueError(f"rl.turn_reward must be mean, discounted or final, got {how!r}")


def consistency(personality: np.ndarray, responses: list[str]) -> float:
    """Whole-conversation consistency in [0, 1]: persona score stable across turns, no repeating oneself."""
    spread = float(personality.max() - personality.min()) if len(personality) else 0.0
    return 0.5 * (1.0 - min(1.0, spread / 0.5)) + 0.5 * (1.0 - self_repetition(responses))


class ConversationScores:
    """Scores every assistant turn of a batch of rollouts in one ``RewardScorer.score`` call; cached per batch."""

    def __init__(self, scorer, personas_by_id: dict[str, Persona], aggregation: str = "mean",
                 discount: float = 0.9):
        aggregate_turns(np.zeros(1), aggregation, discount)  # validate early
        self.scorer, self.personas_by_id = scorer, personas_by_id
        self.aggregation, self.discount = aggregation, discount
        self._key, self._value, self.last_table = None, None, []

    def __call__(self, turns: list[list[dict]], persona_ids: list[str | None],
                 completion_ids=None) -> dict[str, np.ndarray]:
        key = tuple(tuple(t["response"] for t in row) for row in turns), tuple(persona_ids)
        if key == self._key:
            return self._value
        contexts, responses, personas, owner = [], [], [], []
        for i, (row, pid) in enumerate(zip(turns, persona_ids)):
            for t in row:
                contexts.append(t["context"])
                responses.append(t["response"])
                personas.append(self.personas_by_id.get(pid) if pid else None)
                owner.append(i)
        batch = self.scorer.score(contexts, responses, personas, self._reference_fluency(turns, completion_ids))
        owner = np.array(owner)
        out = {h: np.zeros(len(turns), dtype=np.float32) for h in HEADS}
        out["consistency"] = np.zeros(len(turns), dtype=np.float32)
        table = []
        for i, row in enumerate(turns):
            idx = np.flatnonzero(owner == i)
            for h in HEADS:
                out[h][i] = aggregate_turns(batch.heads[h][idx], self.aggregation, self.discount)
            out["consistency"][i] = consistency(batch.heads["personality"][idx], [t["response"] for t in row])
            convo = "\n".join(f"{m['role']}: {m['content']}" for m in row[0]["context"] if m["role"] != "system")
            for k, (t, j) in enumerate(zip(row, idx)):
                convo += f"\nassistant [{float(batch.composite[j]):.3f}]: {t['response']}"
                if k + 1 < len(row):  # the user turn that followed ends the next turn's context
                    convo += f"\nuser: {row[k + 1]['context'][-1]['content']}"
            table.append({"persona": persona_ids[i] or "", "conversation": convo,
                          "consistency": float(out["consistency"][i]),
                          **{h: float(out[h][i]) for h in HEADS}})
        self.last_table = table
        self._key, self._value = key, out
        return out


    def _reference_fluency(self, turns, completion_ids) -> np.ndarray | None:
        """Each turn's fluency from the RL reference pass (the turn's span of the completion), when handed over."""
        if any("span" not in t for row in turns for t in row):
            return None
        return self.scorer.reference_fluency(completion_ids, [[t["span"] for t in row] for row in turns])


def conversation_reward_funcs(scorer, personas_by_id: dict[str, Persona], aggregation: str = "mean",
                              discount: float = 0.9, consistency_weight: float = 0.1):
    """TRL reward callables for multi-turn rollouts: one per head (aggregated over turns) plus ``consistency``.

    Returns ``(funcs, weights, scores)``; ``scores.last_table`` holds the last
    batch's conversations for sample tables. Each callable needs the ``turns``
    column ``MultiTurnRollout`` returns and fails clearly without it.
    """
    scores = ConversationScores(scorer, personas_by_id, aggregation, discount)
    funcs = []
    for head in (*HEADS, "consistency"):
        def f(prompts, completions, head=head, **kwargs):
            if "turns" not in kwargs:
                raise ValueError(f"reward '{head}': multi-turn rewards need the 'turns' column of MultiTurnRollout; "
                                 "with rl.turns: 1 use RewardScorer.trl_reward_funcs")
            pids = kwargs.get("persona_id") or [None] * len(completions)
            return [float(x) for x in scores(kwargs["turns"], pids, kwargs.get("completion_ids"))[head]]

        f.__name__ = head
        funcs.append(f)
    weights = [scorer.weights.get(h, 0.0) for h in HEADS] + [consistency_weight]
    return funcs, weights, scores
