"""convrl.tracking.traces on a temporary SQLite store: turns, feedback, preferences, redaction, windows."""

from __future__ import annotations

import time

import pytest

from convrl.tracking import traces

EXP = "serving-test"


def _turn(**kw):
    args = dict(session_id="s-1", variant="champion", model_name="convrl-policy", model_version="1",
                persona="empathetic_coach", messages=[{"role": "system", "content": "You are kind."},
                                                      {"role": "user", "content": "hello"}],
                reply="Hi there!", latency_s=0.42, prompt_tokens=12, completion_tokens=4, ttft_s=0.05)
    args.update(kw)
    return traces.log_turn(EXP, **args)


@pytest.fixture(scope="module")
def store(mlflow_store):
    return mlflow_store


def test_turn_round_trip_with_feedback(store):
    start = time.time() - 1.0
    tid = _turn(session_id="s-round", turn_id="chatcmpl-round", timestamp=start)
    ids = traces.log_feedback(tid, thumbs=False, rating=2, source_id="user-7", comment="too short")
    assert len(ids) == 2
    traces.log_feedback(tid, thumbs=True)  # the user changed their mind: the latest thumbs wins
    df = traces.search_turns(EXP)
    row = df[df.trace_id == tid].iloc[0]
    assert list(df.columns) == traces.TURN_COLUMNS
    assert row.session_id == "s-round" and row.turn_id == "chatcmpl-round"
    assert (row.variant, row.model_version, row.persona, row.source) == ("champion", "1", "empathetic_coach", "api")
    assert row.reply == "Hi there!" and row.messages[-1] == {"role": "user", "content": "hello"}
    assert row.latency_s == pytest.approx(0.42) and row.ttft_s == pytest.approx(0.05)
    assert (row.prompt_tokens, row.completion_tokens) == (12, 4)
    assert row.thumbs is True or row.thumbs == True  # noqa: E712 - pandas may box it
    assert row.rating == 2 and row.comment == "too short"
    assert abs(row.timestamp.timestamp() - start) < 0.01
    assert traces.existing_turn(EXP, "chatcmpl-round") == tid
    assert traces.existing_turn(EXP, "chatcmpl-unknown") is None


def test_session_metadata_and_token_usage_are_mlflow_native(store):
    from convrl.tracking import client

    tid = _turn(session_id="s-native")
    t = client().get_trace(tid)
    assert t.info.trace_metadata["mlflow.trace.session"] == "s-native"
    assert t.info.tags["convrl.kind"] == "turn"
    usage = t.info.token_usage or {}
    assert usage.get("input_tokens") == 12 and usage.get("output_tokens") == 4


def test_pii_is_redacted_before_writing(store):
    from convrl.tracking import client

    tid = _turn(session_id="jo@example.com", messages=[{"role": "user", "content": "mail jo@example.com"}],
                reply="I will call 555-123-4567 from 10.1.2.3")
    traces.log_feedback(tid, rating=5, comment="reach me at jo@example.com")
    raw = client().get_trace(tid).to_json()
    assert "jo@example.com" not in raw and "555-123-4567" not in raw and "10.1.2.3" not in raw
    row = traces.search_turns(EXP).set_index("trace_id").loc[tid]
    assert row.session_id.startswith("anon-") and row.session_id == traces.safe_id("jo@example.com")
    assert "[EMAIL]" in row.messages[0]["content"] and "[IP]" in row.reply
    assert "jo@example.com" not in row.comment


def test_time_window(store):
    old = _turn(session_id="s-old", timestamp=time.time() - 3 * 86400)
    new = _turn(session_id="s-new")
    recent = traces.search_turns(EXP, since=time.time() - 86400)
    assert new in set(recent.trace_id) and old not in set(recent.trace_id)
    early = traces.search_turns(EXP, until=time.time() - 2 * 86400)
    assert list(early.trace_id) == [old]


def test_preferences_round_trip(store):
    tid = traces.log_preference(EXP, session_id="arena-1", prompt_messages=[{"role": "user", "content": "hey"}],
                                reply_a="Hello friend!", reply_b="hi", variant_a="challenger",
                                variant_b="champion", choice="a", persona="cheerful_guide",
                                model_version_a="2", model_version_b="1")
    traces.log_preference(EXP, session_id="arena-1", prompt_messages=[{"role": "user", "content": "and?"}],
                          reply_a="x", reply_b="y", variant_a="champion", variant_b="challenger", choice="tie",
                          persona="cheerful_guide")
    prefs = traces.search_preferences(EXP)
    assert list(prefs.columns) == traces.PREFERENCE_COLUMNS and len(prefs) == 2
    row = prefs.set_index("trace_id").loc[tid]
    assert (row.chosen, row.rejected, row.chosen_variant) == ("Hello friend!", "hi", "challenger")
    assert row.prompt_messages == [{"role": "user", "content": "hey"}] and row.model_version_a == "2"
    tie = prefs[prefs.choice == "tie"].iloc[0]
    assert tie.chosen == "" and tie.chosen_variant == "tie"
    # Preferences are not turns.
    assert tid not in set(traces.search_turns(EXP).trace_id)


def test_bad_feedback_and_choice_say_what_is_wrong(store):
    tid = _turn()
    with pytest.raises(ValueError, match="thumbs .* or a rating"):
        traces.log_feedback(tid)
    with pytest.raises(ValueError, match="integer from 1 to 5"):
        traces.log_feedback(tid, rating=7)
    with pytest.raises(ValueError, match="true or false"):
        traces.log_feedback(tid, thumbs="yes")
    with pytest.raises(ValueError, match="choice must be one of"):
        traces.log_preference(EXP, session_id="a", prompt_messages=[], reply_a="", reply_b="", variant_a="x",
                              variant_b="y", choice="both", persona="p")


def test_unknown_experiment_reads_empty(store):
    assert traces.search_turns("no-such-experiment").empty
    assert list(traces.search_preferences("no-such-experiment").columns) == traces.PREFERENCE_COLUMNS


def test_store_failure_raises_trace_write_error(monkeypatch, tmp_path):
    # A store that cannot be written (a file where the database's directory should be).
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    with pytest.raises(traces.TraceWriteError):
        _turn()
