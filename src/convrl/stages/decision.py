"""The A/B-compare, register and promote stages: decisions on evaluate's scores, no models loaded.

Kept apart from ``stages.evaluation`` so that their components import neither torch nor transformers: each
of these steps ran 5-6 s in the demo, nearly all of it importing the evaluation stack it never used.

    from convrl.stages.decision import ab_stage, register_stage, promote_stage
    outcome = ab_stage(cfg, parent_run_id, "scores/", "decision.json")
"""

from __future__ import annotations

import pandas as pd

from convrl import registry, tracking
from convrl.config import Config
from convrl.eval.artifacts import DecisionRecord, EvaluationScores
from convrl.rl.artifact import PolicyArtifact


def ab_stage(cfg: Config, parent_run_id: str, scores_path: str, decision_path: str) -> str:
    from convrl.eval.ab import ABSettings, compare

    with tracking.stage_run(parent_run_id, "ab_compare", cfg.tracking.experiment) as run:
        evaluation = EvaluationScores.load(scores_path)
        scores = evaluation.scores
        # Held-out judges are guardrails too: a reward head that improves while its judge regresses
        # is reward hacking, and must not promote.
        judges = [c for c in scores.columns if c.startswith("judge_") and pd.api.types.is_numeric_dtype(scores[c])]
        cols = ["prompt_id", "composite", "quality", "personality", "engagement", "relevance"] + judges
        cand = scores[scores["model"] == "candidate"][cols]
        base = scores[scores["model"] == "baseline"][cols]
        a = cfg.ab
        settings = ABSettings(primary="composite", n_bootstrap=a.n_bootstrap, confidence=a.confidence,
                              min_samples=a.min_samples, min_improvement=a.min_improvement,
                              guardrail_margin=a.guardrail_margin, guardrail_margins=dict(a.guardrail_margins),
                              strict_guardrails=list(a.strict_guardrails),
                              seed=a.seed)
        decision = compare(cand, base, settings, key="prompt_id")
        record = DecisionRecord(**decision.to_dict(), summary=decision.summary(), headline=evaluation.headline,
                                baseline=evaluation.baseline)
        record.save(decision_path)
        run.log_dict(record.to_dict(), "ab/decision.json")
        prim = decision.metrics.get("composite", {})
        run.log_metrics({f"ab/{k}": v for k, v in prim.items() if isinstance(v, (int, float))}, parent=True)
        run.set_tags({"convrl.decision": decision.outcome, "convrl.decision_summary": decision.summary()}, parent=True)
        return decision.outcome


def register_stage(cfg: Config, parent_run_id: str, policy_dir: str, decision_path: str) -> str:
    with tracking.stage_run(parent_run_id, "register", cfg.tracking.experiment) as run:
        policy = PolicyArtifact.load(policy_dir)
        decision = DecisionRecord.load(decision_path)
        parent = tracking.get_run(parent_run_id)
        prim = decision.primary()
        # The evaluation headline comes from the decision artifact, i.e. from what evaluate measured.
        tags = {"convrl.data_fingerprint": parent.data.tags.get("convrl.data_fingerprint", ""),
                "convrl.config_hash": cfg.fingerprint(), "convrl.decision": decision.outcome,
                "convrl.composite_candidate": f"{prim.get('mean_candidate', float('nan')):.4f}",
                "convrl.composite_baseline": f"{prim.get('mean_baseline', float('nan')):.4f}",
                "convrl.composite_diff_ci": f"[{prim.get('ci_low', float('nan')):.4f}, {prim.get('ci_high', float('nan')):.4f}]",
                **{f"convrl.eval.{k}": f"{v:.4f}" for k, v in sorted(decision.headline.items())
                   if isinstance(v, (int, float))}}
        version, created = registry.register_candidate(policy.logged_model, cfg.registry.model_name,
                                                      parent_run_id, tags)
        run.set_tags({"convrl.registered_version": version, "convrl.registered_new": str(created)}, parent=True)
        return version


def promote_stage(cfg: Config, parent_run_id: str, version: str, decision_path: str) -> dict:
    with tracking.stage_run(parent_run_id, "promote", cfg.tracking.experiment) as run:
        decision = DecisionRecord.load(decision_path)
        if decision.outcome != "promote":
            raise registry.RegistryError(f"refusing to promote: decision is {decision.outcome!r}")
        result = registry.promote(cfg.registry.model_name, version, decision.summary or "A/B promote")
        run.set_tags({"convrl.champion": result["champion"], "convrl.previous_champion": result["previous"] or ""},
                     parent=True)
        return result
