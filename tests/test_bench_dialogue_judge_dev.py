"""bench/dialogue_judge_dev.py end to end on a small sample of the rated dialogues (skipped without ../shared/data)."""

from __future__ import annotations

import pytest

from tests.benches import run_bench
from tests.conftest import SHARED_DATA


@pytest.mark.shared_data
def test_dialogue_judge_dev_compares_every_feature_set_on_the_dev_split():
    if not (SHARED_DATA / "user_satisfaction").is_dir():
        pytest.skip(f"{SHARED_DATA} has no user_satisfaction")
    out = run_bench("dialogue_judge_dev", "--data", str(SHARED_DATA), "--max-per-source", "40", "--cap", "15")
    lines = out.stdout.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and "dev n" not in line
            and len(line.split("|")) == 9]
    sets = {r[1].strip() for r in rows}
    assert sets == {"base", "conversation", "+cues", "+reaction", "all"}
    assert {r[0].strip() for r in rows} == {"ridge", "gbm"} and {r[2].strip() for r in rows} == {"cap", "full"}
    assert all(-1 <= float(r[6].split("[")[0]) <= 1 for r in rows)
    # The reference rows: the raters' own turn ratings against the reaction model's predicted ones.
    refs = [line.split("|")[1:-1] for line in lines if line.startswith("| overall vs") or line.startswith("| the raters")]
    assert len(refs) == 3 and all(int(r[1]) >= 10 and -1 <= float(r[2].split("[")[0]) <= 1 for r in refs)


@pytest.mark.shared_data
def test_dialogue_judge_dev_compares_the_two_reaction_models():
    if not (SHARED_DATA / "user_satisfaction").is_dir():
        pytest.skip(f"{SHARED_DATA} has no user_satisfaction")
    out = run_bench("dialogue_judge_dev", "--data", str(SHARED_DATA), "--max-per-source", "25", "--reaction", "encoder",
                    "--reaction-epochs", "0.5")
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith(("| tfidf", "| encoder"))]
    per_turn = [r for r in rows if len(r) == 3]
    judged = [r for r in rows if len(r) == 5]
    assert [r[0].strip() for r in per_turn] == ["tfidf", "encoder"] and all(int(r[1]) >= 10 for r in per_turn)
    assert {(r[0].strip(), r[1].strip()) for r in judged} == {
        (m, j) for m in ("tfidf", "encoder") for j in ("reaction_mean alone", "judge (gbm, all features)")}
    assert all(-1 <= float(r[-1].split("[")[0]) <= 1 for r in per_turn + judged)
