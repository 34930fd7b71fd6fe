import json

import numpy as np
import pytest
from scipy import stats

from convrl import meta_eval
from convrl.meta_eval import cli as meta_eval_cli
from convrl.rewards.heads import HEADS
from convrl.rewards.human_data import (RatedDataError, convai2_items, read_jsonl, satisfaction_items,
                                       write_jsonl)
from tests.conftest import SHARED_DATA


def test_weighted_midranks_equal_ranks_of_the_expanded_sample():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=30).astype(float)  # many ties
    w = rng.integers(0, 3, size=(4, 30)).astype(float)
    got = meta_eval.weighted_midranks(x, w)
    for b in range(4):
        expanded = np.repeat(x, w[b].astype(int))
        ranks = stats.rankdata(expanded)
        first = np.concatenate([[0], np.cumsum(w[b].astype(int))[:-1]])
        for i in np.flatnonzero(w[b]):
            assert got[b, i] == pytest.approx(ranks[first[i]])


def test_correlate_recovers_known_relations():
    rng = np.random.default_rng(1)
    rating = rng.normal(size=400)
    units = np.repeat(np.arange(100), 4)
    w = meta_eval.bootstrap_weights(units, 300, seed=0)
    strong = meta_eval.correlate(rating + 0.1 * rng.normal(size=400), rating, w)
    assert strong["spearman"] > 0.95 and strong["spearman_ci"][0] > 0.9
    noise = meta_eval.correlate(rng.normal(size=400), rating, w)
    assert noise["spearman_ci"][0] < 0 < noise["spearman_ci"][1]
    assert meta_eval.correlate(np.ones(400), rating, w)["spearman"] is None  # a constant head: no correlation


def test_dialogue_level_ratings_are_aggregated_per_group():
    items = [{"context": [], "response": "x", "persona": [], "group": f"d{i // 3}",
              "ratings": {"dialogue": float(i // 3), "turn": float(i % 3 + i // 3)}} for i in range(30)]
    scores = {"head": np.arange(30, dtype=float)}
    res = meta_eval.meta_evaluate(items, scores, n_bootstrap=50)
    assert res["ratings"]["dialogue"]["level"] == "dialogue" and res["ratings"]["turn"]["level"] == "response"
    row = next(r for r in res["rows"] if r["rating"] == "dialogue")
    assert row["n"] == 10 and row["spearman"] == pytest.approx(1.0)


def test_a_dialogue_scores_the_mean_of_its_best_three_turns():
    """Whole-conversation rule (chosen on training-side dialogues): the best moments, not the plain mean."""
    from convrl.meta_eval.stats import DIALOGUE_TOP_K, dialogue_scores

    assert DIALOGUE_TOP_K == 3
    turns = {"a": [0.9, 0.0, 0.9, 0.0, 0.9, 0.0], "b": [0.6] * 6, "c": [0.3] * 5, "d": [0.2, 0.1]}
    rating = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    items = [{"context": [], "response": "x", "persona": [], "group": g, "ratings": {"overall": rating[g]}}
             for g, v in turns.items() for _ in v]
    score = np.array([x for v in turns.values() for x in v])
    inv = np.unique([it["group"] for it in items], return_inverse=True)[1]
    assert dialogue_scores(score, inv) == pytest.approx([0.9, 0.6, 0.3, 0.15])  # "d": fewer than 3 turns
    row = meta_eval.meta_evaluate(items, {"head": score}, n_bootstrap=20)["rows"][0]
    assert row["level"] == "dialogue" and row["n"] == 4
    assert row["spearman"] == pytest.approx(1.0)  # by the plain mean, "a" (0.45) would rank below "b" (0.6)


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"context": [{"role": "user", "content": "hi"}], "response": "hello",
                             "ratings": {"r": 3}}) + "\n" + json.dumps({"context": [], "response": 3}) + "\n")
    with pytest.raises(RatedDataError, match=r"bad.jsonl:2: 'response'"):
        read_jsonl(p)
    p.write_text('{"context": [], "response": "x", "ratings": {"r": "good"}}\n')
    with pytest.raises(RatedDataError, match="rating 'r'"):
        read_jsonl(p)
    assert meta_eval_cli.main(["meta-eval", str(tmp_path / "missing.jsonl")]) == 2


def _run_cli(path, capsys) -> dict:
    rc = meta_eval_cli.main(["meta-eval", str(path), "--json", "--no-fluency", "--n-bootstrap", "200"])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def _check(result: dict, ratings: set[str]):
    assert set(result["ratings"]) == ratings
    heads = {r["head"] for r in result["rows"]}
    assert set(HEADS) | {"composite", "baseline:length"} <= heads
    for r in result["rows"]:
        if r["spearman"] is not None and r["n"] >= 20:
            lo, hi = r["spearman_ci"]
            assert -1 <= lo <= r["spearman"] <= hi <= 1 and np.isfinite(r["pearson"])


@pytest.mark.shared_data
def test_suite_scores_whole_held_out_dialogues(tmp_path):
    """Folder mode reads every rated assistant turn of ``max_dialogues`` held-out dialogues (whole conversations)."""
    from convrl.meta_eval.suite import SuiteLimits, load_rated_sets
    from convrl.rewards.human_data import held_out

    root = tmp_path / "data"
    root.mkdir()
    (root / "convai2_human_eval").symlink_to(SHARED_DATA / "convai2_human_eval")
    sets, info, dialogues = load_rated_sets(root, SuiteLimits(max_dialogues=6))
    items = sets["convai2"]
    groups = {it["group"] for it in items}
    assert len(groups) == 6 == info["convai2"]["held_out_dialogues"] and set(dialogues) == groups
    assert all(held_out(g, 0.3, 13) for g in groups)
    every_turn = [it for it in convai2_items(SHARED_DATA / "convai2_human_eval")[0] if it["group"] in groups]
    assert len(items) == len(every_turn) > 6 * 3  # all turns, not three per dialogue
    sampled, _, _ = load_rated_sets(root, SuiteLimits(max_dialogues=6, per_dialogue=3))
    assert {it["group"] for it in sampled["convai2"]} == groups and len(sampled["convai2"]) <= 18


@pytest.mark.shared_data
def test_meta_eval_on_convai2_human_ratings(tmp_path, capsys):
    items, info = convai2_items(SHARED_DATA / "convai2_human_eval", max_items=120, per_dialogue=2)
    assert info["unrated"] > 0 and info["kept"] > 1000 and len(items) == 120
    assert all(any(m["role"] == "user" for m in it["context"]) for it in items)
    assert sum(bool(it["persona"]) for it in items) > 60  # two early exports lack the bot profile
    path = write_jsonl(items, tmp_path / "convai2.jsonl")
    result = _run_cli(path, capsys)
    _check(result, {"dialogue_score", "profile_match", "thumb"} & {k for it in items for k in it["ratings"]})
    assert result["ratings"]["dialogue_score"]["level"] == "dialogue"


@pytest.mark.shared_data
def test_meta_eval_on_user_satisfaction(tmp_path, capsys):
    items, info = satisfaction_items(SHARED_DATA / "user_satisfaction", max_items=120, per_dialogue=2)
    assert info["sessions"] >= 3000 and len(items) == 120
    path = write_jsonl(items, tmp_path / "sat.jsonl")
    result = _run_cli(path, capsys)
    _check(result, {"satisfaction", "overall"})
    assert result["ratings"]["satisfaction"]["level"] == "response"
    # The text table is what people read: every rating and head appears.
    table = meta_eval.format_table(result)
    assert "rating 'satisfaction'" in table and "relevance" in table
    assert "composite - baseline:length" in table and {d["b"] for d in result["contrasts"]} >= {"baseline:length"}


@pytest.mark.shared_data
def test_meta_eval_data_command(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    assert meta_eval_cli.main(["meta-eval-data", "convai2", str(SHARED_DATA / "convai2_human_eval"), str(out),
                           "--max-items", "10"]) == 0
    assert len(read_jsonl(out)) == 10


def test_converters_on_tiny_files(tmp_path):
    c2 = tmp_path / "c2"
    c2.mkdir()
    dialog = [{"sender": "participant1", "text": "hi! i love dogs", "sender_class": "Human", "evaluation_score": None},
              {"sender": "participant2", "text": "hello! i have a dog too.", "sender_class": "Bot", "evaluation_score": 1},
              {"sender": "participant1", "text": "what breed?", "sender_class": "Human", "evaluation_score": None},
              {"sender": "participant2", "text": "a beagle.", "sender_class": "Bot", "evaluation_score": None}]
    (c2 / "a.json").write_text(json.dumps([
        {"dialog": dialog, "bot_profile": ["i have a dog."], "eval_score": 4, "profile_match": 1},
        {"dialog": dialog[:2], "bot_profile": [], "eval_score": 2, "profile_match": ""},  # one bot turn: too short
        {"dialog": dialog, "bot_profile": [], "eval_score": None}]))  # unrated
    items, info = convai2_items(c2)
    assert info == {"dialogues": 3, "unrated": 1, "too_short": 1, "kept": 1, "items": 2, "groups": 1}
    assert items[0]["ratings"] == {"dialogue_score": 4.0, "thumb": 1.0, "profile_match": 1.0}
    assert items[1]["ratings"] == {"dialogue_score": 4.0, "profile_match": 1.0}
    assert items[1]["context"][-1] == {"role": "user", "content": "what breed?"} and items[0]["persona"] == ["i have a dog."]
    sat = tmp_path / "sat"
    sat.mkdir()
    (sat / "MWOZ.txt").write_text("USER\tI need a taxi.\tinform\t3,3,4\nSYSTEM\tWhere to?\trequest\t\n"
                                  "USER\tThe station.\tinform\t2,2,2\nSYSTEM\tBooked.\tinform\t\n"
                                  "USER\tThanks.\tthank\t4,4,5\nUSER\tOVERALL\t\t3,4,4\n\n")
    (sat / "ReDial-action.txt").write_text("ignored, it repeats ReDial.txt with other actions\n")
    items, info = satisfaction_items(sat)
    assert info["sessions"] == 1 and [it["response"] for it in items] == ["Where to?", "Booked."]
    assert items[0]["ratings"] == {"satisfaction": 2.0, "overall": pytest.approx(11 / 3)}
    assert items[1]["ratings"]["satisfaction"] == pytest.approx(13 / 3)


def test_paired_difference_tells_a_real_gap_from_overlapping_cis():
    """Two heads whose CIs overlap can still differ: the contrast bootstraps a - b on the same resamples."""
    rng = np.random.default_rng(3)
    n = 300
    rating = rng.normal(size=n)
    noise = rng.normal(size=n)
    strong = rating + 0.8 * noise            # shares its noise with `weaker`: paired, the gap is clear
    weaker = rating + 1.0 * noise
    items = [{"context": [], "response": "x", "group": f"g{i}", "ratings": {"r": float(rating[i])}} for i in range(n)]
    res = meta_eval.meta_evaluate(items, {"strong": strong, "weaker": weaker, "same": strong.copy()}, n_bootstrap=200,
                                  contrasts=[("strong", "weaker"), ("weaker", "strong"), ("strong", "same"),
                                             ("strong", "missing")])
    c = {(d["a"], d["b"]): d for d in res["contrasts"]}
    rows = {r["head"]: r for r in res["rows"]}
    assert rows["strong"]["spearman_ci"][0] < rows["weaker"]["spearman_ci"][1]     # the plain CIs overlap
    assert c[("strong", "weaker")]["verdict"] == "higher" and c[("weaker", "strong")]["verdict"] == "lower"
    assert c[("strong", "weaker")]["diff"] == pytest.approx(rows["strong"]["spearman"] - rows["weaker"]["spearman"])
    assert c[("strong", "same")]["verdict"] == "tie" and c[("strong", "same")]["diff"] == 0
    assert ("strong", "missing") not in c                                          # a column that is not scored


def test_paired_difference_at_dialogue_and_pair_level():
    rng = np.random.default_rng(5)
    items, good, bad = [], [], []
    for d in range(60):  # dialogue-level rating: 3 items a dialogue
        q = rng.normal()
        for _ in range(3):
            items.append({"context": [], "response": "x", "group": f"d{d}", "ratings": {"overall": q}})
            good.append(q + 0.3 * rng.normal())
            bad.append(rng.normal())
    for p in range(60):  # pairs: the first item of each pair is the better one
        for k in range(2):
            items.append({"context": [], "response": "x", "group": f"p{p}", "ratings": {"harmless": float(k == 0)}})
            good.append(1.0 - k + 0.1 * rng.normal())
            bad.append(rng.normal())
    res = meta_eval.meta_evaluate(items, {"good": np.array(good), "bad": np.array(bad)}, n_bootstrap=200,
                                  contrasts=[("good", "bad")])
    by = {d["rating"]: d for d in res["contrasts"]}
    assert by["overall"]["level"] == "dialogue" and by["overall"]["verdict"] == "higher"
    assert by["harmless"]["level"] == "pair" and by["harmless"]["verdict"] == "higher"
