"""bench/personality_judge_dev.py: the judge's variants on synthetic replies, and the real ConvAI2 run where present."""

from __future__ import annotations

import numpy as np
import pytest

from convrl.meta_eval.suite import rated_persona
from tests.benches import load_bench, run_bench
from tests.conftest import SHARED_DATA


def test_variants_reward_persona_facts_and_only_density_is_length_normalised():
    bench = load_bench("personality_judge_dev")
    card = rated_persona(["i have two dogs.", "i work as a nurse."])
    replies = ["i am a nurse", "i am a nurse and my day was long and busy and i am tired of the weather today",
               "the weather is nice", "my two dogs love walks, and i work nights as a nurse"]
    cols = bench.variants(replies, [card] * 4)
    assert set(cols) == {"judge", "hits", "fact_coverage", "best_fact_overlap", "density", "length"}
    assert cols["hits"][2] == 0 == cols["density"][2] and cols["judge"][3] > cols["judge"][2]
    assert cols["hits"][0] == cols["hits"][1] and cols["density"][0] > cols["density"][1]  # same facts, more words
    assert cols["fact_coverage"][3] == 1.0 and cols["fact_coverage"][0] == 0.5
    assert np.all(cols["judge"] == bench.variants(replies, [card] * 4)["judge"])
    assert bench.variants(["hi"], [None])["hits"][0] == 0


@pytest.mark.shared_data
def test_personality_judge_bench_on_convai2():
    if not (SHARED_DATA / "convai2_human_eval").is_dir():
        pytest.skip(f"{SHARED_DATA} has no convai2_human_eval")
    out = run_bench("personality_judge_dev", "--data", str(SHARED_DATA))
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    judge_rho = float(rows["profile_match"].split("|")[3])
    assert judge_rho > 0.15  # the judge agrees with people's profile guesses on the training side
