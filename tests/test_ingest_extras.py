"""Around ingest: preference pairs, the data card, ``convrl data`` and the ingest stage's persona table.

Small synthetic inputs; the stage test uses a throwaway MLflow store. Run::

    python -m pytest tests/test_ingest_extras.py -q
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from convrl.data.card import build_card, render_card
from convrl.data.dedup import NearDuplicateIndex, exact_key
from convrl.data.ingest import ingest
from convrl.data.preferences import preference_pairs
from convrl.data.schema import conform_turns


def _turns(rows) -> pd.DataFrame:
    out = []
    for cid, split, convo in rows:
        for i, (role, text, rating, thumb) in enumerate(convo):
            out.append({"conversation_id": cid, "turn_index": i, "role": role, "text": text,
                        "feedback_rating": rating, "feedback_thumb": thumb, "source": "t", "split": split})
    return conform_turns(pd.DataFrame(out))


N = float("nan")


def test_preference_pairs_trl_format_margin_and_no_split_crossing():
    t = _turns([
        ("a", "train", [("system", "be nice", N, N), ("user", "hi", N, N), ("assistant", "Hello! How are you?", 5, N)]),
        ("b", "train", [("user", "Hi", N, N), ("assistant", "go away", 1, N)]),
        ("c", "train", [("user", "hi ", N, N), ("assistant", "meh", 4.5, N)]),           # margin 0.5 to a: no pair
        ("d", "test", [("user", "hi", N, N), ("assistant", "test reply", 1, N)]),        # other split: never paired
        ("e", "train", [("user", "weather?", N, N), ("assistant", "sunny", N, 1.0)]),   # thumbs: up = 5
        ("f", "train", [("user", "weather?", N, N), ("assistant", "no idea", N, 0.0)]),  # down = 1
        ("g", "train", [("user", "unrated", N, N), ("assistant", "x", N, N)]),
    ])
    pairs = preference_pairs(t, with_metadata=True)
    got = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert got == {("Hello! How are you?", "go away"), ("meh", "go away"), ("sunny", "no idea")}
    p = next(p for p in pairs if p["chosen"][0]["content"] == "sunny")
    assert p["prompt"] == [{"role": "user", "content": "weather?"}] and p["split"] == "train"
    assert set(preference_pairs(t)[0]) == {"prompt", "chosen", "rejected"}  # TRL's columns only
    assert preference_pairs(t, split="test") == []
    assert len(preference_pairs(t, max_pairs_per_prompt=1)) == 2
    with pytest.raises(ValueError):
        preference_pairs(t, min_margin=0)


def test_preference_pairs_context_window():
    t = _turns([
        ("a", "train", [("user", "first", N, N), ("assistant", "one", N, N), ("user", "and now?", N, N),
                        ("assistant", "good", 5, N)]),
        ("b", "train", [("user", "other start", N, N), ("assistant", "two", N, N), ("user", "and now?", N, N),
                        ("assistant", "bad", 2, N)]),
    ])
    assert preference_pairs(t) == []  # different full prefixes
    pairs = preference_pairs(t, context_turns=1)
    assert len(pairs) == 1 and pairs[0]["prompt"] == [{"role": "user", "content": "and now?"}]
    assert len(preference_pairs(t, context_turns=3)) == 0


def test_near_duplicate_index_is_deterministic_and_thresholded():
    a = ["the quick brown fox jumps over the lazy dog near the river bank today"]
    b = ["the quick brown fox jumps over the lazy dog near the river bank tonight"]
    c = ["a totally unrelated sentence about cooking pasta with garlic and oil"]
    idx = NearDuplicateIndex(threshold=0.7)  # 10 of 14 distinct shingles shared: Jaccard 0.71
    assert idx.add("a", a) is None and idx.add("b", b) == "a" and idx.add("c", c) is None
    strict = NearDuplicateIndex(threshold=0.9)
    assert strict.add("a", a) is None and strict.add("b", b) is None
    assert exact_key([("user", "Hi, there!")]) == exact_key([("user", "hi there")])
    assert exact_key([("user", "hi")]) != exact_key([("assistant", "hi")])


def _chat_file(tmp_path):
    p = tmp_path / "chats.jsonl"
    lines = [{"id": f"c{i}", "persona": {"persona_id": "pirate", "name": "Pirate"} if i == 0 else None,
              "messages": [{"role": "user", "content": f"My email is u{i}@example.com, question {i} about ships"},
                           {"role": "assistant", "content": f"Arr, answer {i} " + "long " * (i * 20),
                            "feedback": {"rating": 1 + i % 5}}]} for i in range(12)]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    return p


def test_data_card_counts_and_text(tmp_path):
    res = ingest([f"jsonl:{_chat_file(tmp_path)}"], quarantine_threshold=1.0)
    card = build_card(res)
    assert card["totals"]["conversations"] == 12 and card["totals"]["quarantined"] == 1
    assert card["pii_redacted"] == {"email": 12}
    assert card["feedback"]["rated_turns"] == 12 and sum(card["conversations_per_split"].values()) == 12
    assert card["conversations_per_persona"]["pirate"] == 1 and card["personas_from_sources"] == 1
    assert sum(r["turns"] for r in card["turn_length_histogram"]) == 24
    text = render_card(card)
    assert card["quarantine_categories"] == {"invalid_json": 1}
    assert card["quarantine_examples"]["invalid_json"].startswith("chats.jsonl:13: malformed JSON")
    for part in ("12 conversations", "Turns per role", "PII redacted: email 12", "Quarantine by category",
                 "invalid_json", "malformed JSON", "#"):
        assert part in text
    json.dumps(card)  # JSON-able, for MLflow


def test_data_cli_inspect_and_ingest(tmp_path, capsys):
    from convrl.data_cli import main

    spec = f"jsonl:{_chat_file(tmp_path)}"
    assert main(["inspect", spec, "--quarantine-out", str(tmp_path / "q.parquet")]) == 0
    out = capsys.readouterr().out
    assert "Data card" in out and "1 quarantined rows" in out and len(pd.read_parquet(tmp_path / "q.parquet")) == 1
    assert main(["inspect", spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["turns"] == 24
    assert main(["inspect", "jsonl:/no/such/file.jsonl"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # over the default 5% quarantine threshold (1 of 13): fails, but writes the quarantine table
    assert main(["ingest", spec, "--out", str(tmp_path / "o")]) == 2
    assert (tmp_path / "o" / "quarantine.parquet").exists()
    assert main(["ingest", spec, "--out", str(tmp_path / "o2"), "--quarantine-threshold", "0.5"]) == 0
    assert len(pd.read_parquet(tmp_path / "o2" / "personas.parquet")) == 1


def test_data_cli_plugs_into_a_parser():
    import argparse

    from convrl.data_cli import add_commands

    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["data", "inspect", "chatterbot:english", "--max-conversations", "5"])
    assert args.fn.__name__ == "cmd_inspect" and args.specs == ["chatterbot:english"]


def test_ingest_stage_merges_source_personas(mlflow_store, tmp_path):
    from convrl import stages
    from convrl.config import load_config
    from convrl.data.personas import personas_from_table
    from convrl.data_checks.runner import run_checks
    from convrl.stages.data import ingest_stage

    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"persona": {"persona_id": "pirate", "name": "Pirate", "facts": ["has a ship"]},
                                       "messages": [{"role": "user", "content": f"ahoy {i}, any treasure {i * 3}?"},
                                                    {"role": "assistant", "content": f"arr {i} chests of gold"}]})
                           for i in range(10)))
    cfg = load_config("tiny", [f'data.sources=["jsonl:{p}", "chatterbot:english?cap=30"]'])
    parent = stages.begin(cfg, "ingest-stage-test")
    out = {k: str(tmp_path / f"{k}.parquet") for k in ("turns", "personas", "quarantine")}
    stats = ingest_stage(cfg, parent, out["turns"], out["personas"], out["quarantine"])
    personas = pd.read_parquet(out["personas"])
    ids = list(personas["persona_id"])
    assert ids[:3] == ["empathetic_coach", "cheerful_guide", "calm_expert"] and ids[3:] == ["pirate"]
    assert stats["personas"] == 4 and stats["persona_cards_from_config"] == 3
    assert personas_from_table(personas)[3].facts == ["has a ship"]
    report = run_checks(pd.read_parquet(out["turns"]), personas, min_conversations_per_split=3)
    assert report.success, report.to_markdown()


@pytest.mark.parametrize("override", ["data.quarantine_threshold=1.5", "data.near_duplicate_threshold=-0.1",
                                      "data.max_turn_chars=-1"])
def test_data_config_rejects_out_of_range_ingest_settings(override):
    from convrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_config("tiny", [override])


def test_grouped_conversations_share_a_split_and_ungrouped_splits_do_not_change():
    from convrl.data.split import assign_splits

    ids = pd.Series([f"c{i}" for i in range(40)] + [f"p{i}-{side}" for i in range(20) for side in ("a", "b")])
    src = pd.Series(["s"] * len(ids))
    groups = {f"p{i}-{side}": f"p{i}" for i in range(20) for side in ("a", "b")}
    got = assign_splits(ids, src, 0.1, 0.2, seed=13, groups=groups)
    assert all(got[f"p{i}-a"] == got[f"p{i}-b"] for i in range(20))
    assert len({got[f"p{i}-a"] for i in range(20)}) > 1  # groups are split like conversations, not all in train
    plain = assign_splits(ids[:40], src[:40], 0.1, 0.2, seed=13)
    assert plain == assign_splits(ids[:40], src[:40], 0.1, 0.2, seed=13, groups={})
