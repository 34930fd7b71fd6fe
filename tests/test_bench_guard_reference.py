"""bench/guard_reference.py: its step -> prompt map is TRL's sampling order, and its statistics separate a
prompt-driven score from a policy that drifts."""

import numpy as np
import pytest

from tests.benches import load_bench


@pytest.mark.parametrize("seed", [13, 1, 2])
def test_step_prompts_is_trls_sampling_order(seed):
    from trl.trainer.utils import RepeatSampler

    bench = load_bench("guard_reference")
    # The demo: one prompt a step, 8 rollouts of it (num_generations), one pass over 48 prompts.
    sampler = RepeatSampler(data_source=list(range(48)), mini_repeat_count=8, batch_size=1, repeat_count=1,
                            shuffle=True, seed=seed)
    order = list(sampler)[::8]
    assert order == bench.step_prompts(48, seed)


def test_reference_stats_remove_the_prompts_share():
    bench = load_bench("guard_reference")
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.0, 0.4, size=48)                         # what each step's prompt allows
    drift = np.linspace(0.0, -0.05, 48)                           # the policy losing its persona
    rollout = 0.5 * ref + drift + 0.01 * rng.normal(size=48)
    out = bench.reference_stats(ref, rollout)
    assert out["corr"] > 0.9 and out["scale"] == pytest.approx(0.5, abs=0.05)
    assert out["sd_residual"] < 0.5 * out["sd_raw"]
    first, last = out["residual_first_last_quarter"]
    assert last - first == pytest.approx(-0.0375, abs=0.01)       # the drift, no longer hidden by the prompts
