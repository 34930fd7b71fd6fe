"""What every TrainJob node runs: GRPO on the inputs the RL step staged in a shared directory.

::

    torchrun --module convrl.stages.distributed_train --workdir DIR   # each TrainJob node
    python -m convrl.stages.distributed_train --workdir DIR           # one process (tests, debugging)

``DIR`` lives on the shared ReadWriteMany PVC; ``stage_inputs`` (called by the
RL pipeline step) fills it, the job writes ``out/``::

    config.json              the resolved Config
    run.json                 stage_run_id / parent_run_id: where rank 0 logs per-step metrics
    turns.parquet  personas.parquet  reward_models/
    out/checkpoints/         one directory for all ranks (resume after a restart)
    out/policy/              the merged policy (rank 0)
    out/samples/             sample conversations with their scores, as the inline step logs them (rank 0)
    out/result.json          history, steps, seconds, ... (rank 0), read back by the RL step

torchrun turns the ``PET_*`` variables of the torch-distributed runtime into
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; the HF Trainer under TRL's GRPOTrainer
picks those up through accelerate: one process per GPU, DDP, every process
generating its own rollouts for ``rl.prompts_per_step`` prompts per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from convrl import models, tracking
from convrl.config import Config, config_from_json
from convrl.data.personas import prompt_personas
from convrl.data.prompts import build_prompts
from convrl.rl.grpo import train_grpo
from convrl.rl.reward_setup import reward_setup
from convrl.rewards.bundle import load_scorer
from convrl.runtime import offline_defaults

TURNS, PERSONAS, REWARDS, OUT = "turns.parquet", "personas.parquet", "reward_models", "out"


def stage_inputs(workdir: str | Path, cfg: Config, turns_path: str, personas_path: str, reward_dir: str,
                 stage_run_id: str = "", parent_run_id: str = "") -> Path:
    """Copy the RL step's inputs into ``workdir`` (created); returns it."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "config.json").write_text(cfg.to_json())
    (wd / "run.json").write_text(json.dumps({"stage_run_id": stage_run_id, "parent_run_id": parent_run_id}))
    shutil.copyfile(turns_path, wd / TURNS)
    shutil.copyfile(personas_path, wd / PERSONAS)
    if (wd / REWARDS).exists():
        shutil.rmtree(wd / REWARDS)
    shutil.copytree(reward_dir, wd / REWARDS)
    return wd


@dataclass
class TrainingInputs:
    prompts: list[dict]
    funcs: list
    weights: list[float]
    scorer: object
    rollout: object = None          # MultiTurnRollout when rl.turns > 1
    conversation_scores: object = None
    turns: pd.DataFrame | None = None  # the ingested turns (DPO reads human ratings from them)
    personas_by_id: dict | None = None

    def sample_table(self) -> pd.DataFrame:
        """The last scored batch (single-turn replies or whole multi-turn conversations) as a table."""
        if self.conversation_scores is not None:
            return pd.DataFrame(self.conversation_scores.last_table)
        return self.scorer.last_batch_table()


def training_inputs(cfg: Config, turns_path: str | Path, personas_path: str | Path, reward_dir: str | Path,
                    world_size: int = 1) -> TrainingInputs:
    """Prompts, reward callables/weights, scorer and (multi-turn) rollout, as the inline RL step builds them.

    Each of the ``world_size`` processes takes ``rl.prompts_per_step`` prompts per
    step, so the pool grows with it: more GPUs mean more distinct prompts per
    step rather than the same prompts repeated. With one process it is identical
    to the inline step.
    """
    turns = pd.read_parquet(turns_path)
    personas = prompt_personas(pd.read_parquet(personas_path), cfg.data.personas, cfg.data.prompt_personas)
    scorer = load_scorer(str(reward_dir))
    n_prompts = cfg.rl.max_steps * cfg.rl.prompts_per_step * max(1, world_size)
    prompts = build_prompts(turns, personas, "train", n_prompts, cfg.rl.max_prompt_turns, cfg.rl.seed,
                            user_emotion=lambda s: scorer.emotion.predict([s])[0],
                            token_budget=cfg.rl.prompt_token_budget)
    by_id = {p.persona_id: p for p in personas}
    setup = reward_setup(cfg.rl, scorer, by_id, models.resolve_policy(cfg.models.policy))
    return TrainingInputs(prompts, setup.funcs, setup.weights, scorer, setup.rollout, setup.conversation_scores,
                          turns, by_id)


def train_policy(cfg: Config, inputs: TrainingInputs, out_dir: str | Path, on_log=None):
    """Train with ``rl.algorithm``: GRPO (single/multi-turn) or RLOO via ``train_grpo``, DPO via ``train_dpo``."""
    base_dir = models.resolve_policy(cfg.models.policy)
    if cfg.rl.algorithm == "dpo":
        from convrl.rl.dpo import train_dpo

        return train_dpo(cfg, base_dir, inputs.prompts, inputs.scorer, out_dir, on_log=on_log, turns=inputs.turns,
                         personas_by_id=inputs.personas_by_id)
    turn_rewards = inputs.conversation_scores.turn_rewards if inputs.conversation_scores is not None else None
    return train_grpo(cfg.rl, base_dir, inputs.prompts, inputs.funcs, inputs.weights, out_dir, on_log=on_log,
                      rollout=inputs.rollout, scorer=inputs.scorer, turn_rewards=turn_rewards,
                      personas_by_id=inputs.personas_by_id)


class Rank0Logger:
    """``on_log`` for rank 0: per-step metrics live into the RL stage's MLflow run, samples into ``out/samples``.

    Metrics go live only when the pod has MLFLOW_TRACKING_URI (the secret is
    optional) and a run id was staged; a failing server turns that off instead
    of killing hours of training, and the RL step logs the history from
    result.json. Samples (the last scored batch, at the inline step's cadence)
    are files the RL step logs as tables after the job.
    """

    def __init__(self, run_info: dict, inputs: TrainingInputs, samples_dir: Path, save_steps: int):
        self.run_id = run_info.get("stage_run_id", "") if os.environ.get("MLFLOW_TRACKING_URI") else ""
        self.parent_run_id = run_info.get("parent_run_id", "")
        self.inputs, self.samples_dir, self.save_steps = inputs, samples_dir, max(1, save_steps)

    def __call__(self, row: dict, step: int) -> None:
        if self.run_id:
            try:
                tracking.StageRun(self.run_id, self.parent_run_id).log_metrics(
                    {k: v for k, v in row.items() if k != "step"}, step=step)
            except Exception as exc:  # noqa: BLE001 - tracking must not kill training
                print(f"[distributed_train] MLflow logging failed; metrics go to result.json only: {exc}", flush=True)
                self.run_id = ""
        if "reward" in row and (step == 1 or step % self.save_steps == 0):
            table = self.inputs.sample_table()
            if len(table):
                table.insert(0, "step", step)
                self.samples_dir.mkdir(parents=True, exist_ok=True)
                table.to_json(self.samples_dir / f"step_{step:05d}.json", orient="records")


def _rank_out(shared: Path, rank: int) -> Path:
    """Output dir of one process: the shared ``out/`` for rank 0, a local scratch dir for the others.

    ``train_grpo`` writes the merged policy on every rank; only rank 0's copy
    belongs on the PVC. Checkpoints must still be one directory for all ranks
    (the Trainer saves RNG state per rank and every rank resumes from the same
    step), so the scratch dir's ``checkpoints`` links to the shared one.
    """
    (shared / "checkpoints").mkdir(parents=True, exist_ok=True)
    if rank == 0:
        return shared
    scratch = Path(tempfile.mkdtemp(prefix=f"convrl-rank{rank}-"))
    (scratch / "checkpoints").symlink_to((shared / "checkpoints").resolve(), target_is_directory=True)
    return scratch


def load_result(workdir: str | Path) -> dict:
    """The job's ``out/result.json``; a clear error when rank 0 never wrote it."""
    path = Path(workdir) / OUT / "result.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the TrainJob ended without rank 0 finishing training")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convrl.stages.distributed_train",
                                     description="GRPO on inputs staged by the RL step (one TrainJob node).")
    parser.add_argument("--workdir", required=True, help="directory filled by stage_inputs (on the shared PVC)")
    args = parser.parse_args(argv)
    offline_defaults()
    wd = Path(args.workdir)
    cfg = config_from_json((wd / "config.json").read_text())
    run_info = json.loads((wd / "run.json").read_text()) if (wd / "run.json").exists() else {}
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    inputs = training_inputs(cfg, wd / TURNS, wd / PERSONAS, wd / REWARDS, world)
    shared = wd / OUT
    out = _rank_out(shared, rank)
    logger = Rank0Logger(run_info, inputs, shared / "samples", cfg.rl.save_steps) if rank == 0 else None
    result = train_policy(cfg, inputs, out, on_log=logger)
    if rank != 0:
        (out / "checkpoints").unlink()  # the link first: the shared checkpoints must survive the cleanup
        shutil.rmtree(out, ignore_errors=True)
        return 0
    info = {"steps": result.steps, "seconds": result.seconds, "resumed_from": result.resumed_from,
            "history": result.history, "num_prompts": len(inputs.prompts), "world_size": world,
            "policy_subdir": Path(result.policy_dir).name, "metrics_run_id": logger.run_id,
            "warmstart": result.warmstart}
    tmp = shared / "result.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(shared / "result.json")  # atomic: the RL step never reads half a file
    print(f"[distributed_train] {result.steps} steps in {result.seconds:.0f} s on {world} process(es); "
          f"policy in {result.policy_dir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
