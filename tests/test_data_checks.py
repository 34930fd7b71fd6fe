"""Data checks (convrl.data_checks): a clean table passes; each kind of break is caught.

Every test breaks one thing in a small clean turn/persona table and asserts
that exactly the expectation meant for it fails, with the right count. Fast:
pandas and GX only, no models. Run::

    python -m pytest tests/test_data_checks.py -q
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from convrl.data.personas import Persona, personas_table
from convrl.data.schema import SPLITS, conform_turns
from convrl.data_checks import suites
from convrl.data_checks.runner import CheckReport, DataValidationError, run_checks

N_PER_SPLIT = 5


def _turns() -> pd.DataFrame:
    rows = []
    for split in SPLITS:
        for c in range(N_PER_SPLIT):
            cid = f"src-{split}-{c}"
            convo = [("system", "You are kind."), ("user", "I lost my keys today."),
                     ("assistant", "Oh no, where did you last see them?")]
            for i, (role, text) in enumerate(convo):
                rows.append({"conversation_id": cid, "turn_index": i, "role": role, "text": text,
                             "emotion": "sad" if role == "user" else None,
                             "act": "question" if role == "assistant" else None,
                             "persona_id": "coach" if role == "assistant" else None,
                             "feedback_rating": 4.0 if role == "assistant" else float("nan"),
                             "feedback_thumb": 1.0 if role == "assistant" else float("nan"),
                             "source": "jsonl:test", "split": split})
    return conform_turns(pd.DataFrame(rows))


def _personas() -> pd.DataFrame:
    return personas_table([
        Persona("coach", "Coach", "a kind coach", {"empathy": 0.9}, "warm", ["calm"], facts=["likes tea"]),
        Persona("guide", "Guide", "a cheerful guide", {"humor": 0.7}, "upbeat", ["excited"]),
    ])


@pytest.fixture
def turns() -> pd.DataFrame:
    return _turns()


@pytest.fixture
def personas() -> pd.DataFrame:
    return _personas()


def _failures(report: CheckReport) -> dict[tuple, dict]:
    return {(r["suite"], r["expectation"], r["column"]): r for r in report.results if not r["success"]}


def _only_failure(report: CheckReport, key: tuple, count: int) -> dict:
    failed = _failures(report)
    assert set(failed) == {key}, f"expected only {key} to fail, got {sorted(failed)}"
    assert failed[key]["unexpected_count"] == count
    assert failed[key]["sample"], "a failure must carry sample rows"
    return failed[key]


def _row(turns: pd.DataFrame, cid: str, idx: int):
    return turns.index[(turns["conversation_id"] == cid) & (turns["turn_index"] == idx)][0]


# ------------------------------------------------------------------ clean data


def test_clean_tables_pass(turns, personas):
    report = run_checks(turns, personas)
    assert report.success, report.to_markdown()
    assert {r["suite"] for r in report.results} == set(suites.SUITE_NAMES)
    keys = {"suite", "expectation", "column", "success", "unexpected_count", "element_count",
            "sample", "description"}
    for r in report.results:
        assert set(r) == keys
        assert r["unexpected_count"] == 0 and r["sample"] == []
    by_suite = {r["suite"]: r["element_count"] for r in report.results}
    assert by_suite["turns"] == len(turns)
    assert by_suite["conversations"] == 3 * N_PER_SPLIT
    assert by_suite["splits"] == 3
    report.raise_for_failure()  # no-op when clean


def test_report_keeps_suite_order(turns, personas):
    # GX returns results in its own order; the report follows the suite as written.
    report = run_checks(turns, personas)
    turn_exps = [r["expectation"] for r in report.results if r["suite"] == "turns"]
    assert turn_exps == [e.expectation_type for e in suites.turns_suite().expectations]


# ------------------------------------------------------------------ breaks


def test_unknown_role(turns, personas):
    turns.loc[_row(turns, "src-train-0", 1), "role"] = "bot"
    # The conversation has no user turn any more, so the conversation check fires too.
    report = run_checks(turns, personas)
    failed = _failures(report)
    assert set(failed) == {("turns", "expect_column_values_to_be_in_set", "role"),
                           ("conversations", "expect_column_values_to_be_in_set", "has_user")}
    role = failed[("turns", "expect_column_values_to_be_in_set", "role")]
    assert role["unexpected_count"] == 1
    assert "role='bot'" in role["sample"][0] and "src-train-0" in role["sample"][0]


def test_empty_text(turns, personas):
    turns.loc[_row(turns, "src-test-2", 2), "text"] = ""
    r = _only_failure(run_checks(turns, personas),
                      ("turns", "expect_column_value_lengths_to_be_between", "text"), 1)
    assert "text=''" in r["sample"][0]


def test_overlong_text(turns, personas):
    report = run_checks(turns, personas, max_text_chars=20)
    n_long = int((turns["text"].str.len() > 20).sum())
    _only_failure(report, ("turns", "expect_column_value_lengths_to_be_between", "text"), n_long)


def test_conversation_spanning_two_splits_is_leakage(turns, personas):
    turns.loc[_row(turns, "src-train-3", 2), "split"] = "test"
    r = _only_failure(run_checks(turns, personas),
                      ("conversations", "expect_column_values_to_be_between", "n_splits"), 1)
    assert "src-train-3" in r["sample"][0] and "splits='test,train'" in r["sample"][0]
    assert "leakage" in r["description"]


def test_gap_in_turn_index(turns, personas):
    turns.loc[_row(turns, "src-validation-1", 2), "turn_index"] = 3
    r = _only_failure(run_checks(turns, personas),
                      ("conversations", "expect_column_values_to_be_in_set", "contiguous"), 1)
    assert "turn_indices='0,1,3'" in r["sample"][0]


def test_duplicate_turn_index(turns, personas):
    turns.loc[_row(turns, "src-validation-1", 2), "turn_index"] = 1
    failed = _failures(run_checks(turns, personas))
    dup = failed[("turns", "expect_compound_columns_to_be_unique", "conversation_id, turn_index")]
    assert dup["unexpected_count"] == 2  # both rows of the duplicated pair
    assert ("conversations", "expect_column_values_to_be_in_set", "contiguous") in failed


@pytest.mark.parametrize("leak, what", [("write to jane.doe+x@example.co.uk please", "e-mail"),
                                        ("my box is 192.168.10.254 ok", "IPv4"),
                                        ("see https://s3.io/f?X-Amz-Signature=3fa9c0 now", "URL query string")])
def test_residual_pii(turns, personas, leak, what):
    turns.loc[_row(turns, "src-train-1", 1), "text"] = leak
    report = run_checks(turns, personas)
    failed = _failures(report)
    assert len(failed) == 1
    (r,) = failed.values()
    assert r["expectation"] == "expect_column_values_to_not_match_regex"
    assert r["unexpected_count"] == 1 and what in r["description"]
    assert leak in r["sample"][0]


def test_redacted_placeholders_pass(turns, personas):
    turns.loc[_row(turns, "src-train-1", 1), "text"] = "mail [EMAIL] from [IP], https://x.io/?access_token=[SECRET]"
    assert run_checks(turns, personas).success


def test_bad_labels_and_feedback(turns, personas):
    turns.loc[_row(turns, "src-train-0", 1), "emotion"] = "joy"
    turns.loc[_row(turns, "src-train-0", 2), "act"] = "greeting"
    turns.loc[_row(turns, "src-train-1", 2), "feedback_rating"] = 7.0
    turns.loc[_row(turns, "src-train-2", 2), "feedback_thumb"] = 0.5
    failed = _failures(run_checks(turns, personas))
    assert {k[2] for k in failed} == {"emotion", "act", "feedback_rating", "feedback_thumb"}
    assert all(r["unexpected_count"] == 1 for r in failed.values())


def test_missing_split(turns, personas):
    turns = turns[turns["split"] != "validation"]
    report = run_checks(turns, personas)
    failed = _failures(report)
    assert set(failed) == {("splits", "expect_column_values_to_be_between", "n_conversations")}
    present, enough = [r for r in report.results if r["suite"] == "splits"]
    assert not present["success"] and not enough["success"]
    assert present["unexpected_count"] == enough["unexpected_count"] == 1
    assert "split='validation', n_conversations=0" in present["sample"][0]


def test_too_few_conversations(turns, personas):
    turns = turns[turns["conversation_id"] != "src-test-0"]
    report = run_checks(turns, personas, min_conversations_per_split=N_PER_SPLIT)
    present, enough = [r for r in report.results if r["suite"] == "splits"]
    assert present["success"] and not enough["success"]
    assert enough["unexpected_count"] == 1 and "split='test'" in enough["sample"][0]
    assert [r for r in report.results if not r["success"]] == [enough]
    # The threshold is the caller's: every split is short of 6.
    report = run_checks(_turns(), personas, min_conversations_per_split=N_PER_SPLIT + 1)
    assert _failures(report)[("splits", "expect_column_values_to_be_between",
                              "n_conversations")]["unexpected_count"] == 3


def test_wrong_columns(turns, personas):
    report = run_checks(turns[[c for c in turns.columns if c != "act"]], personas)
    failed = _failures(report)
    table = failed[("turns", "expect_table_columns_to_match_ordered_list", None)]
    assert "missing columns: ['act']" in table["sample"][0]
    # Checks on the absent column fail with GX's error instead of crashing the run.
    act = failed[("turns", "expect_column_values_to_be_in_set", "act")]
    assert act["unexpected_count"] is None and "act" in act["sample"][0]


def test_duplicate_persona_id(turns, personas):
    personas = pd.concat([personas, personas.iloc[[0]]], ignore_index=True)
    r = _only_failure(run_checks(turns, personas),
                      ("personas", "expect_column_values_to_be_unique", "persona_id"), 2)
    assert "persona_id='coach'" in r["sample"][0]


def test_persona_json_fields(turns, personas):
    personas.loc[0, "traits"] = "empathy: high"
    personas.loc[1, "facts"] = '{"not": "a list"}'
    failed = _failures(run_checks(turns, personas))
    assert set(failed) == {("persona_fields", "expect_column_values_to_be_in_set", "traits_ok"),
                           ("persona_fields", "expect_column_values_to_be_in_set", "facts_ok")}
    assert "traits='empathy: high'" in failed[("persona_fields", "expect_column_values_to_be_in_set",
                                               "traits_ok")]["sample"][0]


# ------------------------------------------------------------------ rendering


@pytest.fixture
def broken_report(turns, personas) -> CheckReport:
    turns.loc[_row(turns, "src-train-0", 1), "text"] = "<b>write me</b> at a@b.org"
    turns.loc[_row(turns, "src-train-3", 2), "split"] = "test"
    return run_checks(turns, personas)


def test_raise_for_failure_names_expectations_and_samples(broken_report):
    with pytest.raises(DataValidationError) as exc:
        broken_report.raise_for_failure()
    msg = str(exc.value)
    assert "2 of" in msg
    assert "expect_column_values_to_not_match_regex" in msg and "expect_column_values_to_be_between" in msg
    assert "a@b.org" in msg and "src-train-3" in msg
    assert "1 unexpected" in msg
    assert "ingest config" in msg
    assert exc.value.report is broken_report


def test_raise_shows_at_most_three_samples(turns, personas):
    turns["text"] = "x" * 50
    with pytest.raises(DataValidationError) as exc:
        run_checks(turns, personas, max_text_chars=10).raise_for_failure()
    assert str(exc.value).count("e.g. ") == 3


def test_markdown(broken_report):
    md = broken_report.to_markdown()
    lines = md.splitlines()
    assert "FAILED: 2 of" in md
    assert sum(1 for line in lines if line.startswith("| ")) == len(broken_report.results) + 1
    assert "## Failures" in md and "a@b.org" in md


def test_html_is_standalone_document(broken_report):
    page = broken_report.to_html()
    assert page.lstrip().startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<style>" in page and "<table>" in page
    assert "<link" not in page and "<script" not in page and "http" not in page
    assert "&lt;b&gt;write me&lt;/b&gt;" in page and "<b>write me" not in page  # samples escaped
    assert page.count("<tr class=") == len(broken_report.results)


def test_to_dict_is_json(broken_report, turns, personas):
    d = json.loads(json.dumps(broken_report.to_dict()))
    assert d["success"] is False and d["n_failed"] == 2
    assert len(d["results"]) == len(broken_report.results)
    json.dumps(run_checks(turns, personas).to_dict())


# ------------------------------------------------------------------ consistency


def test_emotion_labels_have_one_home():
    # Read the import from source: importing convrl.rewards.emotion would import torch.
    from convrl.data import schema

    origin = Path(importlib.util.find_spec("convrl.rewards.emotion").origin)
    tree = ast.parse(origin.read_text())
    assert not any(isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "EMOTIONS" for n in tree.body)
    assert any(isinstance(n, ast.ImportFrom) and n.module == "convrl.data.schema"
               and "EMOTIONS" in [a.name for a in n.names] for n in tree.body)
    assert suites.EMOTIONS is schema.EMOTIONS and suites.ACTS is schema.ACTS
