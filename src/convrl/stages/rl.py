"""RL fine-tuning stage: persona-conditioned prompts -> GRPO + LoRA -> merged policy + LoggedModel."""

from __future__ import annotations

from pathlib import Path

from convrl import tracking
from convrl.config import Config
from convrl.rl.artifact import PolicyArtifact
from convrl.stages.distributed_train import train_policy, training_inputs
from convrl.tracking.pyfunc import HFDirModel


def plot_reward_curves(history: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "reward" in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if rows:
        steps = [h["step"] for h in rows]
        ax1.plot(steps, [h["reward"] for h in rows], label="composite", lw=2, color="black")
        for key in sorted(k for k in rows[0] if k.startswith("rewards/") and k.endswith("/mean")):
            ax1.plot(steps, [h.get(key, float("nan")) for h in rows], label=key.split("/")[1], alpha=0.8)
        ax2.plot(steps, [h.get("kl", float("nan")) for h in rows], color="tab:red")
    ax1.set_title("Reward per step (training batches)")
    ax1.set_xlabel("step")
    ax1.legend(fontsize=7)
    ax2.set_title("KL to reference")
    ax2.set_xlabel("step")
    fig.tight_layout()
    return fig


def rl_params(cfg: Config) -> dict:
    """Every ``rl.*`` setting as a flat MLflow param (nested sections as ``rl.lora.r`` ...)."""
    return {k: v for k, v in cfg.flat().items() if k.startswith("rl.")}


def rl_stage(cfg: Config, parent_run_id: str, turns_path: str, personas_path: str, reward_dir: str,
             out_dir: str) -> dict:
    with tracking.stage_run(parent_run_id, "rl_finetune", cfg.tracking.experiment) as run:
        if cfg.rl.launcher == "trainjob":
            # Training runs in a Kubeflow Trainer TrainJob (multi-GPU / multi-node); this step stages its inputs on
            # the shared PVC, waits, copies the policy back, then logs exactly like the inline path below.
            from convrl.stages.trainjob import train_on_cluster

            run.log_params(rl_params(cfg) | {"rl.base_model": cfg.models.policy})
            result = train_on_cluster(cfg, run, turns_path, personas_path, reward_dir, out_dir)
        else:
            # The same inputs a TrainJob node builds, so the two launchers cannot drift apart.
            inputs = training_inputs(cfg, turns_path, personas_path, reward_dir)
            run.log_params(rl_params(cfg) | {"rl.base_model": cfg.models.policy,
                                                                               "rl.num_prompts": len(inputs.prompts)})

            def on_log(row: dict, step: int) -> None:
                run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
                if "reward" in row and (step == 1 or step % max(1, cfg.rl.save_steps) == 0):
                    # Sample conversations as they are generated: reward numbers alone hide degenerate text.
                    table = inputs.sample_table()
                    if len(table):
                        table.insert(0, "step", step)
                        run.log_table(table, f"samples/step_{step:05d}.json")

            result = train_policy(cfg, inputs, out_dir, on_log=on_log)
        if result.warmstart:  # the ending warm-start SFT before RL (rl.warmstart)
            run.log_dict(result.warmstart, "warmstart.json")
            run.log_metrics({f"warmstart/{k}": float(v) for k, v in result.warmstart.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        fig = plot_reward_curves(result.history)
        run.log_figure(fig, "reward_curves.png")
        run.log_dict(result.history, "training_history.json")
        final = [h for h in result.history if "reward" in h]
        summary = {"rl/steps": result.steps, "rl/train_seconds": result.seconds}
        if final:
            k = max(1, len(final) // 4)
            summary["rl/reward_first_quarter"] = sum(h["reward"] for h in final[:k]) / k
            summary["rl/reward_last_quarter"] = sum(h["reward"] for h in final[-k:]) / k
            # Replies cut at the token budget at the end of training (the ending reward lowers it); multi-turn runs
            # also log each policy turn's share (TRL's clipped_ratio reads the last turn only).
            for key in sorted({m for h in final for m in h if m.startswith("completions/clipped_ratio")}):
                clipped = [h[key] for h in final[-k:] if key in h]
                if clipped:
                    summary[f"rl/{key.split('/', 1)[1]}_last_quarter"] = sum(clipped) / len(clipped)
        run.log_metrics(summary, parent=True)
        uri = run.log_pyfunc("policy", HFDirModel(), {"hf_dir": result.policy_dir},
                             params={"base_model": cfg.models.policy, "algorithm": cfg.rl.algorithm})
        art = PolicyArtifact(policy_subdir=Path(result.policy_dir).name, base_model=cfg.models.policy,
                             algorithm=cfg.rl.algorithm, logged_model=uri, stage_run_id=run.run_id,
                             resumed_from=result.resumed_from, summary=summary)
        art.save(out_dir)
        return art
