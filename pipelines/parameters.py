"""The pipeline's KFP-UI run parameters mapped onto dotted config overrides.

A run started from the KFP UI fills simple named fields; ``start_tracking`` turns
them into the same overrides ``convrl run`` takes on the command line::

    ui_overrides(personas="calm_expert", rl_max_steps=800) + split_overrides("rl.beta=0.02; eval.num_prompts=64")
    # ['data.personas=[calm_expert]', 'rl.max_steps=800', 'rl.beta=0.02', 'eval.num_prompts=64']
"""

from __future__ import annotations

import json

from convrl.config import ConfigError


def split_overrides(text: str) -> list[str]:
    """Overrides as one string (a KFP UI parameter): separated by ';' or newlines."""
    return [p.strip() for chunk in (text or "").splitlines() for p in chunk.split(";") if p.strip()]


def ui_overrides(data_sources: str = "", personas: str = "", reward_weights: str = "", rl_max_steps: int = 0,
                 rl_algorithm: str = "", ab_min_improvement: str = "", ab_guardrail_margin: str = "") -> list[str]:
    """Dotted overrides from the pipeline's named KFP UI parameters (empty = keep the preset's value).

    ``data_sources`` and ``personas`` are comma-separated; ``reward_weights`` looks like
    ``quality=0.5,personality=0.2`` and changes only the heads it names.
    """
    out: list[str] = []
    if data_sources.strip():
        # Quoted: a spec's '?opt=...' would end a plain YAML scalar in a flow sequence.
        out.append("data.sources=[" + ", ".join(json.dumps(s.strip()) for s in data_sources.split(",") if s.strip())
                   + "]")
    if personas.strip():
        out.append("data.personas=[" + ", ".join(p.strip() for p in personas.split(",") if p.strip()) + "]")
    for item in (w.strip() for w in reward_weights.split(",") if w.strip()):
        head, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"reward_weights item '{item}' must look like head=weight, e.g. quality=0.5")
        out.append(f"rewards.weights.{head.strip()}={value.strip()}")
    if rl_max_steps:
        out.append(f"rl.max_steps={int(rl_max_steps)}")
    if rl_algorithm.strip():
        out.append(f"rl.algorithm={rl_algorithm.strip()}")
    for name, value in (("min_improvement", ab_min_improvement), ("guardrail_margin", ab_guardrail_margin)):
        if value.strip():
            try:
                out.append(f"ab.{name}={float(value)}")
            except ValueError:
                raise ConfigError(f"ab_{name}={value!r} must be a number, e.g. 0.01") from None
    return out
