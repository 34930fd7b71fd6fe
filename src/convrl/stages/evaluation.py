"""The evaluate stage (and, from ``stages.decision``, the A/B-compare, register and promote stages)."""

from __future__ import annotations

import time
from typing import NamedTuple

import pandas as pd

from convrl import models, registry, tracking
from convrl.config import Config
from convrl.data.personas import prompt_personas
from convrl.data.prompts import build_prompts
from convrl.eval.artifacts import EvaluationScores
from convrl.eval.evaluate import evaluate_models
from convrl.eval.reply_cache import ReplyCache
from convrl.eval.report import build_report
from convrl.home import convrl_home
from convrl.rewards.bundle import RewardBundle
from convrl.rl.artifact import PolicyArtifact
from convrl.runtime import resolve_precision


def baseline_model(cfg: Config) -> tuple[str, str]:
    """The current champion if the registry has one, else the base policy."""
    version = tracking.alias_version(cfg.registry.model_name, registry.CHAMPION)
    if version:
        uri = f"models:/{cfg.registry.model_name}@{registry.CHAMPION}"
        return tracking.resolve_model_dir(uri), f"champion {cfg.registry.model_name} v{version}"
    return models.resolve_policy(cfg.models.policy), f"base model {cfg.models.policy} (no champion yet)"


class EvaluationInputs(NamedTuple):
    personas: list
    scorer: object
    prompts: list[dict]
    panel: object
    bundle: RewardBundle


def evaluation_inputs(cfg: Config, turns: pd.DataFrame, personas_table: pd.DataFrame,
                      reward_dir: str) -> EvaluationInputs:
    """What the evaluate stage scores with, built from a run's ingest and reward-model outputs: the prompt
    personas, the reward scorer, the held-out prompts, the judge panel and the reward bundle (also used to
    re-evaluate a finished run: bench/sampled_evaluation.py)."""
    from convrl.eval.judges import JudgePanel, reference_conversations_from_turns

    e = cfg.eval
    personas = prompt_personas(personas_table, cfg.data.personas, cfg.data.prompt_personas)
    bundle = RewardBundle.load(reward_dir)
    scorer = bundle.scorer(reward_dir)
    prompts = build_prompts(turns, personas, "test", e.num_prompts, cfg.rl.max_prompt_turns,
                            e.seed, user_emotion=lambda s: scorer.emotion.predict([s])[0],
                            token_budget=cfg.rl.prompt_token_budget)
    # Judges learn from the train split when it has text, else from the bundled chatterbot corpus.
    # The safety judge (rewards.safety_data) scores every reply: judge_safety, an A/B guardrail like every judge.
    panel = JudgePanel(reference_conversations_from_turns(turns) or None, weights=cfg.rewards.weights,
                       safety=bundle.safety(reward_dir))
    return EvaluationInputs(personas, scorer, prompts, panel, bundle)


def evaluate_stage(cfg: Config, parent_run_id: str, turns_path: str, personas_path: str, reward_dir: str,
                   policy_dir: str, scores_path: str, report_dir: str) -> dict:
    """Candidate vs baseline on held-out prompts: reward heads, held-out judges, use-case metrics,
    self-play, report. Returns the flat ``{model}/{metric}`` summary plus ``baseline`` (a description),
    ``headline`` (the candidate's headline metrics for its LoggedModel) and ``flagged_gaps``."""
    from convrl.eval.metrics import analyze
    from convrl.eval.report import write_report
    from convrl.eval.selfplay import SelfPlaySettings, evaluate_selfplay, judge_conversations

    e = cfg.eval
    with tracking.stage_run(parent_run_id, "evaluate", cfg.tracking.experiment) as run:
        turns = pd.read_parquet(turns_path)
        personas, scorer, prompts, panel, bundle = evaluation_inputs(cfg, turns, pd.read_parquet(personas_path),
                                                                     reward_dir)
        by_id = {p.persona_id: p for p in personas}
        base_dir, base_desc = baseline_model(cfg)
        policy = PolicyArtifact.load(policy_dir)
        model_dirs = {"candidate": str(policy.weights_dir(policy_dir)), "baseline": base_dir}
        # Where evaluation's minutes go (the RL stage logs its own phases as timing/*).
        timings: dict[str, float] = {}
        precision = resolve_precision(e.precision)
        cache = ReplyCache(convrl_home() / "cache" / "eval" if e.cache else None)
        scores = evaluate_models(model_dirs, prompts, scorer, by_id, e.max_new_tokens, e.batch_size, e.seed,
                                 judges=panel, no_repeat_ngram_size=e.no_repeat_ngram_size, timings=timings,
                                 cache=cache, precision=precision)

        selfplay = None
        sp = e.selfplay
        if sp.conversations > 0:
            user_dir = models.resolve_policy(sp.user_model or cfg.models.policy)
            settings = SelfPlaySettings(conversations=sp.conversations, turns=sp.turns,
                                        max_new_tokens=sp.max_new_tokens, context_turns=sp.context_turns,
                                        seed=e.seed, recall_probes=sp.recall_probes,
                                        no_repeat_ngram_size=e.no_repeat_ngram_size, precision=precision)
            start = time.perf_counter()
            selfplay = evaluate_selfplay(model_dirs, user_dir, personas, settings, panel, encoder=scorer.encoder,
                                         cache=cache)
            dialogue = bundle.dialogue(reward_dir)
            if dialogue is not None:  # rewards.dialogue_data: whole conversations as people rate them
                selfplay = judge_conversations(selfplay, dialogue, scorer.encoder, by_id)
            timings["selfplay_s"] = time.perf_counter() - start
            run.log_table(selfplay.transcripts, "eval/selfplay_transcripts.json")
            run.log_table(selfplay.per_conv, "eval/selfplay_conversations.json")

        a = analyze(scores, e.rate_threshold, e.n_bootstrap, e.seed,
                    selfplay=selfplay.summary if selfplay else None, gap_margin=e.gap_margin)
        summary = dict(a.summary)
        summary.update({f"{k.split('/', 1)[0]}/selfplay_{k.split('/', 1)[1]}": v for k, v in a.selfplay.items()})
        run.log_metrics({k.replace("/", "_"): v for k, v in summary.items()}, parent=True)
        run.log_metrics({f"timing/eval_{k}": v for k, v in timings.items()})
        # Which decodings came from the evaluation cache (eval.cache), so a fast evaluate step explains itself.
        run.set_tags({"convrl.eval_cache_hits": ", ".join(cache.hits) or "none"})
        run.log_table(scores, "eval/scores.json")
        run.log_table(a.gaps, "eval/reward_judge_gaps.json")
        run.log_table(a.conflicts, "eval/reward_conflicts.json")
        run.log_dict(a.headline, "eval/headline.json")
        # The candidate's LoggedModel carries its own evaluation, visible wherever the model is.
        if policy.logged_model:
            tracking.log_model_metrics(policy.logged_model, a.headline, run.run_id)
        EvaluationScores(scores, a.headline, base_desc).save(scores_path)

        report = build_report(a, base_desc, selfplay=selfplay, no_repeat_ngram_size=e.no_repeat_ngram_size,
                              precision=precision)
        write_report(report, report_dir)
        run.log_artifact(report_dir, "report")
        flagged = a.gaps[a.gaps["flagged"]]["verdict"].tolist() if len(a.gaps) else []
        run.set_tags({"convrl.baseline": base_desc, "convrl.reward_judge_gaps": str(len(flagged))}, parent=True)
        report.close()
        return {"baseline": base_desc, **summary, "headline": a.headline, "flagged_gaps": flagged}
