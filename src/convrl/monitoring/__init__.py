"""Production monitoring: score served conversations, compare windows, raise alerts, online A/B.

Pure library code over the served-turns table that
``convrl.tracking.traces.search_turns`` returns (no MLflow, no files here):

* :mod:`.frames`     check the table, per-session view;
* :mod:`.scoring`    reward heads + held-out judges per turn, per version and day;
* :mod:`.windows`    current window vs baseline, alert rules;
* :mod:`.alerts`     webhook, version tags, the rollback guard;
* :mod:`.online_ab`  champion vs challenger on served sessions (unpaired A/B);
* :mod:`.plots`      per-day figures.

``convrl.stages.monitoring`` runs them against MLflow; run them with
``convrl monitor`` and ``convrl ab online``.
"""
