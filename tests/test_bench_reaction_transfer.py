"""bench/reaction_transfer.py: which replies it checks, and the real run where ../shared/data is present."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benches import load_bench, run_bench
from tests.conftest import SHARED_DATA


def test_only_thumbed_replies_that_a_person_answered_are_checked():
    bench = load_bench("reaction_transfer")
    d = {"id": "c1", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello, i love dogs", "ratings": {"thumb": 1}},
        {"role": "user", "content": "me too!"},
        {"role": "assistant", "content": "unrated reply"},
        {"role": "user", "content": "ok"},
        {"role": "assistant", "content": "last reply, never answered", "ratings": {"thumb": 0}}]}
    replies, answers, thumbs, groups = bench.thumbs_with_answers([d])
    assert replies == ["hello, i love dogs"] and answers == ["me too!"] and thumbs.tolist() == [1.0]
    assert groups.tolist() == ["c1"]
    rho, lo, hi = bench.clustered_spearman(np.arange(40.0), np.arange(40.0) % 7, np.repeat(np.arange(10), 4), 50)
    assert lo <= rho <= hi


@pytest.mark.shared_data
def test_reaction_model_carries_over_to_persona_chat():
    if not (SHARED_DATA / "user_satisfaction").is_dir():
        pytest.skip(f"{SHARED_DATA} has no user_satisfaction")
    out = run_bench("reaction_transfer", "--data", str(SHARED_DATA), "--n-bootstrap", "200")
    row = next(line for line in out.stdout.splitlines() if line.startswith("| reaction model"))
    low = float(row.split("[")[1].split(",")[0])
    assert low > 0  # predicts ConvAI2 thumbs above chance, trained on task-oriented sessions only
