"""The serving trace writer: nothing lost while MLflow is down, order kept, journal replayed, no duplicates."""

from __future__ import annotations

import logging

import pytest

from convrl.serving.writer import TraceWriter
from convrl.tracking import traces

EXP = "writer-test"


class FlakyStore:
    """The real traces module behind a switch: while ``down``, every write fails like an unreachable store."""

    def __init__(self, down: bool = False):
        self.down = down
        self.calls = []

    def _gate(self, name):
        self.calls.append(name)
        if self.down:
            raise traces.TraceWriteError("ConnectionError: MLflow at http://mlflow:5000 is unreachable")

    def log_turn(self, experiment, **kw):
        self._gate("log_turn")
        return traces.log_turn(experiment, **kw)

    def log_feedback(self, trace_id, **kw):
        self._gate("log_feedback")
        return traces.log_feedback(trace_id, **kw)

    def log_preference(self, experiment, **kw):
        self._gate("log_preference")
        return traces.log_preference(experiment, **kw)

    def existing_turn(self, experiment, turn_id):
        self._gate("existing_turn")
        return traces.existing_turn(experiment, turn_id)


def _turn(writer, turn_id, text="hello"):
    writer.submit("turn", turn_id=turn_id, session_id="s-w", variant="champion", model_name="convrl-policy",
                  model_version="1", persona="empathetic_coach", messages=[{"role": "user", "content": text}],
                  reply="hi!", latency_s=0.3, prompt_tokens=9, completion_tokens=2, ttft_s=0.1)


def test_outage_buffers_then_writes_everything_in_order(mlflow_store, tmp_path, caplog):
    store = FlakyStore(down=True)
    w = TraceWriter(EXP, tmp_path / "journal.jsonl", retry_initial_s=0.05, retry_max_s=0.2, sink=store)
    w.start()
    caplog.set_level(logging.WARNING, logger="convrl.serve")
    _turn(w, "t-out-1", "my mail is ada@example.com")
    w.submit("feedback", turn_id="t-out-1", thumbs=True, rating=5, comment="", source_id="u1")
    _turn(w, "t-out-2")
    assert not w.flush(timeout=0.8)  # the store is down: nothing written, nothing dropped
    stats = w.stats()
    assert stats["pending"] == 3 and stats["failures"] >= 2 and stats["store_down_s"] > 0
    journal = w.journal.read_text()
    assert journal.count("\n") == 3 and "ada@example.com" not in journal  # redacted before touching disk
    assert "nothing is lost" in caplog.text and "3 records buffered" in caplog.text
    store.down = False
    assert w.flush(timeout=60)
    w.close()
    assert "taking traces again" in caplog.text
    assert w.stats()["written"] == {"turn": 2, "feedback": 1, "preference": 0} and w.stats()["dropped"] == 0
    assert w.journal.read_text() == ""
    turns = traces.search_turns(EXP).set_index("turn_id")
    assert turns.loc["t-out-1"].thumbs and turns.loc["t-out-1"].rating == 5
    assert "t-out-2" in turns.index
    # The feedback call came after its turn's write.
    writes = [c for c in store.calls if c != "existing_turn"]
    assert writes.index("log_feedback") > writes.index("log_turn")


def test_journal_survives_a_stop_and_is_replayed_once(mlflow_store, tmp_path):
    journal = tmp_path / "journal.jsonl"
    down = FlakyStore(down=True)
    w = TraceWriter(EXP, journal, retry_initial_s=0.05, retry_max_s=0.1, sink=down)
    w.start()
    _turn(w, "t-replay")
    w.submit("preference", session_id="arena-r", prompt_messages=[{"role": "user", "content": "q"}],
             reply_a="a", reply_b="b", variant_a="champion", variant_b="challenger", choice="b", persona="p")
    w.close(timeout=0.3)  # the process stops while MLflow is still down
    assert journal.read_text().count("\n") == 2

    w2 = TraceWriter(EXP, journal, retry_initial_s=0.05, sink=FlakyStore())
    w2.start()
    assert w2.flush(timeout=60)
    w2.close()
    assert (traces.search_turns(EXP).turn_id == "t-replay").sum() == 1
    assert (traces.search_preferences(EXP).session_id == "arena-r").sum() == 1

    # A record written just before a crash (journal not yet cleared) is not written twice.
    journal.write_text('{"kind": "turn", "turn_id": "t-replay", "session_id": "s", "variant": "champion", '
                       '"model_name": "m", "model_version": "1", "persona": "p", "messages": [], "reply": "", '
                       '"latency_s": 0.1, "prompt_tokens": 1, "completion_tokens": 1}\n')
    w3 = TraceWriter(EXP, journal, sink=FlakyStore())
    w3.start()
    assert w3.flush(timeout=60)
    w3.close()
    assert (traces.search_turns(EXP).turn_id == "t-replay").sum() == 1


def test_feedback_for_an_unknown_turn_is_dropped_with_a_reason(mlflow_store, tmp_path, caplog):
    w = TraceWriter(EXP, tmp_path / "j.jsonl", sink=FlakyStore())
    w.start()
    caplog.set_level(logging.ERROR, logger="convrl.serve")
    w.submit("feedback", turn_id="never-served", thumbs=False, rating=None, comment="", source_id="u")
    assert w.flush(timeout=60)
    w.close()
    assert w.stats()["dropped"] == 1 and "no served turn never-served" in caplog.text


def test_unknown_kind_is_refused(tmp_path):
    w = TraceWriter(EXP, tmp_path / "j.jsonl")
    with pytest.raises(ValueError, match="unknown record kind"):
        w.submit("metric", value=1)
