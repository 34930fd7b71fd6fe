"""Plugs the MLflow Tracing reader into the ``mlflow-traces:`` data source.

The source (:mod:`convrl.data.sources.mlflow_traces`) lives in the data layer,
which may not import the tracking layer; importing this module registers
:mod:`convrl.tracking.traces` as its reader. ``convrl.stages`` and the command
line import it, so pipeline steps and ``convrl data ingest mlflow-traces:...``
just work; library code calling ``ingest`` directly imports it first::

    import convrl.tracking.trace_source  # noqa: F401
    ingest(["mlflow-traces:convrl-serving?since=7d&split=source"])
"""

from __future__ import annotations

from convrl.data.sources.mlflow_traces import use_reader
from convrl.tracking import traces


def read(experiment: str, since, until, with_arena: bool):
    turns = traces.search_turns(experiment, since=since, until=until)
    prefs = traces.search_preferences(experiment, since=since, until=until) if with_arena else None
    return turns, prefs


use_reader(read)
