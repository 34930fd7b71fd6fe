"""Multi-turn GRPO rollouts through TRL's ``rollout_func``, with a simulated user between policy turns.

One rollout is ``rl.turns`` policy turns. After each policy turn but the last,
the user answers: the frozen base model role-playing the user (a profile built
from the conversation: who opened it, how they feel, what they want), or, with
``rl.multiturn.user_simulator: logged``, the next user turn logged in the data (the
simulator fills in where the log ends). The training sequence is the prompt
followed by every turn; user turns and chat-template glue carry ``env_mask``
0, so only the policy's own tokens enter the loss::

    prompt | a1 <end> <user> u1 <end> <assistant> a2 <end> ...
             111 00000000000000000000000000000000 111 ...

With ``ConvRLGRPOTrainer`` (``rl.trainer``) both sides decode on
``rl.conversation_decoder.CachedDecoder``: each conversation keeps its KV cache
across turns, so turn t+1 prefills only the new glue and user tokens, and each
group's shared prompt is prefilled once; the simulated user has its own cache
(kept across its turns while its view only grows). With the lever off (or a
stock TRL trainer) every policy turn goes through the trainer's
``_generate_single_turn`` from the start of the conversation.

Each assistant turn is scored in its own context (``convrl.rl.turn_rewards``)::

    rollout = MultiTurnRollout(turns=2, user=SimulatedUser(base_dir), tokenizer=tok)
    GRPOTrainer(..., rollout_func=rollout, reward_funcs=conversation_reward_funcs(scorer, personas, ...)[0])
"""

from __future__ import annotations

import time

from convrl.data.usersim import UserProfile, clean_user, user_system_prompt, user_view
from convrl.rl.probe import prompt_key

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
    """The frozen base model playing the user (``eval.selfplay``'s prompt and role swap), batched.

    ``cached`` (default) decodes on a ``CachedDecoder`` with its own random
    stream; otherwise plain ``Generator.generate`` (``fast=False``: transformers'
    default attention, cache and sampling; the benchmark's baseline).
    """

    def __init__(self, model_dir: str, max_new_tokens: int = 32, context_messages: int = 6,
                 temperature: float = 0.8, dtype=None, seed: int = 0, cached: bool = True, fast: bool = True):
        import torch

        from convrl.rl.generation import Generator
        from convrl.runtime import bf16_supported

        if dtype is None:
            dtype = torch.bfloat16 if bf16_supported() and fast else torch.float32
        self.gen = Generator(model_dir, dtype=dtype, fast=fast)
        self.max_new_tokens, self.context_messages = max_new_tokens, context_messages
        self.temperature, self.seed, self.calls = temperature, seed, 0
        self.cached = cached and fast
        self._decoder = None

    def start(self) -> None:
        """A new batch of conversations: forget the cache of the last one."""
        self._decoder = None

    def reply(self, histories: list[list[dict]], profiles: list[UserProfile],
              groups: list[list[int]] | None = None) -> list[str]:
        views = [[{"role": "system", "content": user_system_prompt(p)}]
                 + user_view([m for m in h if m["role"] != "system"], self.context_messages)
                 for h, p in zip(histories, profiles)]
        self.calls += 1
        seed = self.seed + 7919 * self.calls
        if not self.cached:
            said = self.gen.generate(views, max_new_tokens=self.max_new_tokens, batch_size=max(1, len(views)),
                                     do_sample=True, temperature=self.temperature, seed=seed)
        else:
            said = self._reply_cached(views, groups, seed)
        return [clean_user(s, FALLBACK_USER) for s in said]

    def _reply_cached(self, views, groups, seed: int) -> list[str]:
        import copy

        import torch

        from convrl.rl.conversation_decoder import CachedDecoder
        from convrl.rl.generation import sampling_setup

        tok = self.gen.tok
        ids = [tok(tok.apply_chat_template(v, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for v in views]
        dec = self._decoder
        # Carry the cache while every row's view only grew (the window has not slid, its text re-renders the same).
        if dec is not None and dec.rows == len(ids) and all(
                len(x) > len(dec.tokens(i)) and x[:len(dec.tokens(i))] == dec.tokens(i) for i, x in enumerate(ids)):
            dec.extend([x[len(dec.tokens(i)):] for i, x in enumerate(ids)])
        else:
            eos = self.gen.model.generation_config.eos_token_id
            eos = eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id]
            dec = self._decoder = CachedDecoder(self.gen.model, tok.pad_token_id, eos)
            dec.prefill(ids, groups)
        config = copy.deepcopy(self.gen.model.generation_config)
        config.update(do_sample=True, temperature=self.temperature, top_p=0.95)
        _, processors = sampling_setup(config, torch.Generator().manual_seed(seed))
        out = dec.generate(self.max_new_tokens, processors)
        return [tok.decode(o, skip_special_tokens=True).strip() for o in out]


class MultiTurnRollout:
    """``rollout_func(prompts, trainer)`` for GRPOTrainer: ``turns`` policy turns, user turns masked out."""

    def __init__(self, turns: int, user: SimulatedUser | None, tokenizer, user_simulator: str = "model",
                 no_repeat_ngram_size: int = 0, probe=None):
        if turns < 2:
            raise ValueError("MultiTurnRollout is for rl.turns >= 2; single-turn GRPO needs no rollout_func")
        if user_simulator not in ("model", "logged"):
            raise ValueError(f"rl.multiturn.user_simulator must be 'model' or 'logged', got {user_simulator!r}")
        if user is None and user_simulator == "model":
            raise ValueError("rl.multiturn.user_simulator 'model' needs a SimulatedUser")
        self.turns, self.user, self.mode = turns, user, user_simulator
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.probe = probe  # convrl.rl.probe.GreedyProbe: one greedy first turn per group beside the sampled rows
        self.template = TurnTemplate(tokenizer)
        self.tok = tokenizer
        # Rows of the dataset batch, looked up by prompt so logged user turns and emotions follow each row.
        self.row_info: dict[str, dict] = {}

    def register_rows(self, rows: list[dict]) -> None:
        for r in rows:
            self.row_info[prompt_key(r["prompt"])] = r

    def __call__(self, prompts: list[list[dict]], trainer) -> dict:
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
        prompt_ids = [list(p) for p in prompt_ids]
        n = len(prompts)
        completion = [[] for _ in range(n)]
        env_mask = [[] for _ in range(n)]
        histories = [[dict(m) for m in p] for p in prompts]
        turns = [[] for _ in range(n)]
        infos = [self.row_info.get(prompt_key(p), {}) for p in prompts]
        groups = _groups(prompt_ids)
        # ConvRLGRPOTrainer with carry_kv_cache: one cache per conversation for the whole rollout.
        decoder = trainer.conversation_decoder() if hasattr(trainer, "conversation_decoder") else None
        timing = getattr(trainer, "add_timing", lambda name, s: None)
        probe_rows = [g[0] for g in groups] if decoder is not None and self.probe is not None else []
        if decoder is not None:
            # Probe rows go after the rollouts, each in its group (the shared prompt is prefilled once).
            decoder.prefill(prompt_ids + [prompt_ids[i] for i in probe_rows],
                            [g + [n + k] for k, g in enumerate(groups)] if probe_rows else groups)
            processors = trainer.sampling_processors()
            if self.no_repeat_ngram_size > 0:
                from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

                # Before the sampler, which leaves only the drawn token finite.
                processors = [NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size), *processors]
        elif self.probe is not None:
            raise ValueError("rl.guard.probe_heads decodes its greedy probes on the cached multi-turn decoder "
                             "(rl.speed.carry_kv_cache and rl.speed.fast_rollouts with convrl's GRPO trainer, no "
                             "vLLM); turn those on or set rl.guard.probe_heads to []")
        elif self.no_repeat_ngram_size > 0:
            raise ValueError("rl.multiturn.no_repeat_ngram_size needs the cached multi-turn decoder "
                             "(rl.speed.carry_kv_cache: true with convrl's GRPO trainer); set it to 0 otherwise")
        if self.user is not None:
            self.user.start()
        for t in range(self.turns):
            t0 = time.perf_counter()
            if decoder is not None and t == 0 and probe_rows:
                generated = decoder.generate(trainer.max_completion_length, processors,
                                             greedy=[False] * n + [True] * len(probe_rows),
                                             greedy_processors=self.probe.processors())
                decoder.select(list(range(n)))
                timing("policy_decode_s", time.perf_counter() - t0)
                t1 = time.perf_counter()
                self.probe.record([prompts[i] for i in probe_rows], [infos[i].get("persona_id") for i in probe_rows],
                                  [x.strip() for x in self.tok.batch_decode(generated[n:], skip_special_tokens=True)])
                timing("probe_score_s", time.perf_counter() - t1)
                generated = generated[:n]
            elif decoder is not None:
                generated = decoder.generate(trainer.max_completion_length, processors)
                timing("policy_decode_s", time.perf_counter() - t0)
            else:
                ids = [p + c for p, c in zip(prompt_ids, completion)]
                # Later turns differ per row: one completion each (vLLM server mode dedupes by num_generations).
                generated = trainer._generate_single_turn(ids, None, {}, trainer.num_generations if t == 0 else 1)
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
            t0 = time.perf_counter()
            user_texts = self._user_turns(histories, infos, t, groups)
            timing("user_decode_s", time.perf_counter() - t0)
            glues = [self.template.between(g[-1] if g and g[-1] in trainer.eos_token_ids else None, u)
                     for g, u in zip(generated, user_texts)]
            for i, (glue, u) in enumerate(zip(glues, user_texts)):
                completion[i] += glue
                env_mask[i] += [0] * len(glue)
                histories[i].append({"role": "user", "content": u})
            if decoder is not None:
                decoder.extend(glues)
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "logprobs": None, "env_mask": env_mask,
                "turns": turns}

    def _user_turns(self, histories, infos, t: int, groups: list[list[int]] | None = None) -> list[str]:
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
                pos = {i: k for k, i in enumerate(todo)}
                sub_groups = [[pos[i] for i in g if i in pos] for g in (groups or [[i] for i in todo])]
                said = self.user.reply([histories[i] for i in todo],
                                       [user_profile(histories[i], infos[i].get("user_emotion", "neutral"))
                                        for i in todo], [g for g in sub_groups if g])
                for i, s in zip(todo, said):
                    out[i] = s
        return out


def _groups(prompt_ids: list[list[int]]) -> list[list[int]]:
    """Rows with identical prompts (a GRPO group), in first-seen order."""
    seen: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        seen.setdefault(tuple(p), []).append(i)
    return list(seen.values())
