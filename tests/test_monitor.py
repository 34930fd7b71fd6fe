"""Monitoring library: served-turn tables, scoring with heads + judges, window alerts, alert routing, plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convrl.config import load_config
from convrl.config.monitoring import ALERT_KINDS
from convrl.monitoring import alerts as alerting
from convrl.monitoring.frames import MonitoringDataError, normalise_turns, session_table
from convrl.monitoring.plots import daily_figure
from convrl.monitoring.scoring import daily_summary, score_turns
from convrl.monitoring.windows import RULES, detect_alerts, window_bounds

NOW = pd.Timestamp("2026-11-20T12:00:00Z")
REPLIES = ["That sounds hard. What happened after that, do you want to talk about it?",
           "Congratulations! How did you celebrate such wonderful news?",
           "Let's sort this out step by step: which error do you see first?",
           "I hear you. Have you tried resting a little before the exam?"]
USERS = ["I lost my job today.", "I passed my exam!", "My laptop keeps crashing.", "I feel so tired."]


def served(n_sessions: int, start: pd.Timestamp, hours: float, version: str = "3", variant: str = "champion",
           replies=REPLIES, rating=None, thumbs=None, turns: int = 2, seed: int = 0) -> pd.DataFrame:
    """A served-turns table shaped like tracking.traces.search_turns."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        t0 = start + pd.Timedelta(hours=float(rng.uniform(0, hours)))
        msgs = [{"role": "system", "content": "You are a warm coach."}]
        for k in range(turns):
            user = USERS[(s + k) % len(USERS)]
            msgs = msgs + [{"role": "user", "content": user}]
            reply = replies[(s + k) % len(replies)]
            rows.append({"trace_id": f"tr-{variant}-{version}-{start:%m%d%H}-{s}-{k}", "session_id": f"{variant}-{start:%m%d%H}-{s}",
                         "timestamp": t0 + pd.Timedelta(minutes=k), "variant": variant, "model_version": version,
                         "persona": "empathetic_coach", "messages": list(msgs), "reply": reply, "latency_s": 0.5,
                         "completion_tokens": 12, "thumbs": thumbs if thumbs is None else bool(rng.random() < thumbs),
                         "rating": rating if rating is None else int(np.clip(round(rng.normal(rating, 0.5)), 1, 5))})
            msgs = msgs + [{"role": "assistant", "content": reply}]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def scorer(tiny_encoder):
    from convrl.rewards.heads import RewardScorer

    return RewardScorer(tiny_encoder, None, None)


@pytest.fixture(scope="module")
def panel():
    from convrl.eval.judges import JudgePanel

    return JudgePanel()


def test_normalise_turns_checks_columns_and_feedback():
    df = served(2, NOW - pd.Timedelta(hours=3), 1, rating=4, thumbs=0.5)
    out = normalise_turns(df)
    assert str(out["timestamp"].dt.tz) == "UTC" and out["thumbs"].dtype == float
    assert out["timestamp"].is_monotonic_increasing
    with pytest.raises(MonitoringDataError, match="lacks column"):
        normalise_turns(df.drop(columns=["reply"]))
    with pytest.raises(MonitoringDataError, match="rating 1-5"):
        normalise_turns(df.assign(rating=7))
    with pytest.raises(MonitoringDataError, match="not a list"):
        normalise_turns(df.assign(messages="hello"))


def test_score_turns_adds_heads_judges_and_signals(scorer, panel, personas):
    df = served(3, NOW - pd.Timedelta(hours=5), 2, rating=4)
    df.loc[0, "reply"] = ""
    df.loc[1, "reply"] = "I am here I am here I am here I am here I am here"
    df.loc[3, "reply"] = "You're a coward."
    scored = score_turns(normalise_turns(df), scorer, panel, {p.persona_id: p for p in personas}, batch_size=2)
    for col in ("composite", "quality", "relevance", "judge_composite", "gap", "empty", "repetition", "day"):
        assert col in scored and scored[col].notna().all(), col
    by_id = scored.set_index("trace_id")
    assert by_id.at[df.loc[0, "trace_id"], "empty"] == 1.0 and by_id.at[df.loc[2, "trace_id"], "empty"] == 0.0
    assert by_id.at[df.loc[1, "trace_id"], "repetition"] > 0.5
    assert by_id.at[df.loc[3, "trace_id"], "uncivil"] == 1.0 and by_id.at[df.loc[2, "trace_id"], "uncivil"] == 0.0
    assert by_id.at[df.loc[3, "trace_id"], "judge_civility"] == 0.5
    assert np.allclose(scored["gap"], scored["composite"] - scored["judge_composite"])
    daily = daily_summary(scored)
    assert {"model_version", "day", "turns", "sessions", "rated", "composite", "rating"} <= set(daily.columns)
    assert daily["turns"].sum() == len(scored)
    sessions = session_table(scored)
    assert len(sessions) == 3 and (sessions["session_turns"] == 2).all()
    insulted = df.loc[3, "session_id"]
    assert sessions.set_index("session_id")["judge_civility"].to_dict() == {
        s: (0.5 if s == insulted else 1.0) for s in sessions["session_id"]}  # the session's least civil reply
    with pytest.raises(ValueError, match="not known to the monitor"):
        score_turns(normalise_turns(df.assign(persona="pirate")), scorer, panel, {})


def _scored(n, start, hours, composite, rating=None, empty=0.0, version="3", seed=0, judge=None,
            repetition=None, thumbs=None, uncivil=0.0):
    """A scored table without models: the alert logic only reads metric columns.

    Reward heads score around ``composite``, the judges around ``judge`` (default: the same);
    ``repetition`` is the mean trigram-repetition rate, ``thumbs`` the chance of a thumbs up.
    """
    rng = np.random.default_rng(seed)
    df = normalise_turns(served(n, start, hours, version=version, turns=1, seed=seed, thumbs=thumbs))
    k = len(df)
    for col in ("composite", "quality", "personality", "engagement", "relevance", "judge_composite",
                "judge_quality", "judge_personality", "judge_engagement", "judge_relevance"):
        mean = judge if judge is not None and col.startswith("judge_") else composite
        df[col] = np.clip(rng.normal(mean, 0.03, k), 0, 1)
    df["gap"] = df["composite"] - df["judge_composite"]
    df["empty"] = (rng.random(k) < empty).astype(float)
    df["uncivil"] = (rng.random(k) < uncivil).astype(float)
    df["repetition"] = 0.0
    if rating is not None:
        df["rating"] = np.clip(rng.normal(rating, 0.4, k), 1, 5)
    if repetition is not None:
        df["repetition"] = np.clip(rng.normal(repetition, 0.03, k), 0, 1)
    df["day"] = df["timestamp"].dt.strftime("%Y-%m-%d")
    return df


def test_window_alerts_fire_on_a_real_drop_only():
    mon = load_config("tiny").monitor
    b0, c0, end = window_bounds(NOW, mon.window_days, mon.baseline_days)
    base = _scored(60, b0, 24 * 6, composite=0.6, rating=4.2, seed=1)
    steady = _scored(30, c0, 20, composite=0.6, rating=4.2, seed=2)
    alerts, table = detect_alerts(pd.concat([base, steady], ignore_index=True), mon, NOW, n_bootstrap=400)
    assert alerts == [], [a.message for a in alerts]
    assert set(table["scope"]) == {"all", "3"}
    assert table[table["metric"] != "thumbs"]["enough_data"].all()  # no thumbs were given

    worse = _scored(30, c0, 20, composite=0.45, rating=3.0, empty=0.4, seed=3)
    alerts, table = detect_alerts(pd.concat([base, worse], ignore_index=True), mon, NOW, n_bootstrap=400)
    kinds = {(a.kind, a.metric, a.scope) for a in alerts}
    assert ("quality_drop", "composite", "3") in kinds and ("quality_drop", "judge_composite", "all") in kinds
    assert ("satisfaction_drop", "rating", "3") in kinds and ("empty_rise", "empty", "3") in kinds
    a = next(a for a in alerts if a.metric == "composite" and a.scope == "3")
    assert a.ci_high < -mon.quality_margin and a.current_mean < a.baseline_mean
    assert "composite fell on model version 3" in a.message
    # One row per rule and scope, but for the reaction rule: no reaction model scored these turns.
    assert len(table) == 2 * len([r for r in RULES if r.metric != "reaction"])


# Each rule against a steady baseline: a change well beyond its margin fires it (on that metric only),
# a fresh sample of the same traffic stays quiet, and so does a real but sub-margin change.
RULE_CASES = {
    "repetition_rise": dict(metric="repetition", steady=dict(repetition=0.05), worse=dict(repetition=0.3),
                            slight=dict(repetition=0.08)),  # +0.03, under rate_margin 0.05
    # Reward hacking: the reward heads climb while the held-out judges stay put. Nothing dropped, so
    # only the gap rule may fire.
    "reward_judge_gap": dict(metric="gap", steady=dict(), worse=dict(composite=0.75),
                             slight=dict(composite=0.63)),  # +0.03, under gap_margin 0.05
    "satisfaction_drop": dict(metric="thumbs", steady=dict(thumbs=0.8), worse=dict(thumbs=0.3),
                              slight=dict(thumbs=0.75)),  # -0.05, under thumbs_margin 0.1
}


def test_a_rise_in_insults_fires_incivility_rise_with_no_margin():
    # Any significant rise pages (monitor.incivility_margin = 0): 0% -> 15% of replies insult the user.
    mon = load_config("tiny").monitor
    assert mon.incivility_margin == 0.0 and "incivility_rise" in ALERT_KINDS
    b0, c0, _ = window_bounds(NOW, mon.window_days, mon.baseline_days)
    base = _scored(80, b0, 24 * 6, 0.6, seed=1)
    same = _scored(40, c0, 20, 0.6, seed=2)
    assert detect_alerts(pd.concat([base, same], ignore_index=True), mon, NOW, n_bootstrap=400)[0] == []
    worse = _scored(40, c0, 20, 0.6, seed=2, uncivil=0.15)
    alerts, _ = detect_alerts(pd.concat([base, worse], ignore_index=True), mon, NOW, n_bootstrap=400)
    assert {(a.kind, a.metric, a.scope) for a in alerts} == {("incivility_rise", "uncivil", "all"),
                                                              ("incivility_rise", "uncivil", "3")}


@pytest.mark.parametrize("kind", sorted(RULE_CASES))
def test_each_rule_fires_on_a_real_change_and_stays_quiet_otherwise(kind):
    case = RULE_CASES[kind]
    metric = case["metric"]
    mon = load_config("tiny").monitor
    b0, c0, _ = window_bounds(NOW, mon.window_days, mon.baseline_days)
    steady = dict(composite=0.6, judge=0.6, **case["steady"])

    def run(current: dict, n_base: int = 80, n_cur: int = 40):
        base = _scored(n_base, b0, 24 * 6, seed=1, **steady)
        cur = _scored(n_cur, c0, 20, seed=2, **{**steady, **current})
        alerts, table = detect_alerts(pd.concat([base, cur], ignore_index=True), mon, NOW, n_bootstrap=400)
        return alerts, table.set_index(["scope", "metric"])

    alerts, table = run({})  # the same traffic, resampled: noise only
    assert alerts == [], [a.message for a in alerts]
    assert table.loc[("3", metric), "enough_data"] and not table.loc[("3", metric), "alert"]

    alerts, table = run(case["worse"])
    assert {(a.kind, a.metric, a.scope) for a in alerts} == {(kind, metric, "all"), (kind, metric, "3")}
    a = next(a for a in alerts if a.scope == "3")
    margin = getattr(mon, next(r.margin_key for r in RULES if r.metric == metric))
    assert a.margin == margin
    if metric == "thumbs":
        assert a.ci_high < -margin and a.current_mean < a.baseline_mean
        assert "thumbs fell on model version 3" in a.message
    else:
        assert a.ci_low > margin and a.current_mean > a.baseline_mean
        assert f"{metric} rose on model version 3" in a.message
    assert bool(table.loc[("3", metric), "alert"])

    # Many sessions make a small shift statistically clear (the CI excludes 0), yet it is within the margin.
    alerts, table = run(case["slight"], n_base=1500, n_cur=1500)
    row = table.loc[("3", metric)]
    assert (row["ci_high"] < 0) if metric == "thumbs" else (row["ci_low"] > 0), row.to_dict()
    assert alerts == [], [a.message for a in alerts]


def test_a_dip_in_a_few_sessions_is_noise_not_an_alert():
    """Thumbs are binary, so a dozen sessions move the rate by more than the margin by chance alone:
    the point estimate is beyond the margin, the CI is not, and nobody is paged."""
    mon = load_config("tiny").monitor
    b0, c0, _ = window_bounds(NOW, mon.window_days, mon.baseline_days)
    base, cur = _scored(12, b0, 100, 0.6, seed=1), _scored(12, c0, 20, 0.6, seed=2)
    base["thumbs"], cur["thumbs"] = [1.0] * 10 + [0.0] * 2, [1.0] * 8 + [0.0] * 4
    alerts, table = detect_alerts(pd.concat([base, cur], ignore_index=True), mon, NOW, n_bootstrap=400)
    row = table.set_index(["scope", "metric"]).loc[("3", "thumbs")]
    assert row["enough_data"] and row["diff"] < -mon.thumbs_margin < row["ci_high"], row.to_dict()
    assert alerts == [], [a.message for a in alerts]


def test_too_few_sessions_never_alert():
    mon = load_config("tiny", ["monitor.min_sessions=50"]).monitor
    b0, c0, _ = window_bounds(NOW, mon.window_days, mon.baseline_days)
    df = pd.concat([_scored(60, b0, 100, 0.6, seed=1), _scored(10, c0, 20, 0.2, seed=2)], ignore_index=True)
    alerts, table = detect_alerts(df, mon, NOW, n_bootstrap=200)
    assert alerts == [] and not table["enough_data"].any()


def test_alert_routing_tags_rollback_and_webhook(monkeypatch):
    mon = load_config("tiny").monitor
    b0, c0, _ = window_bounds(NOW, mon.window_days, mon.baseline_days)
    df = pd.concat([_scored(40, b0, 100, 0.6, rating=4.5, seed=1),
                    _scored(30, c0, 20, 0.4, rating=3.0, seed=2)], ignore_index=True)
    alerts, _ = detect_alerts(df, mon, NOW, n_bootstrap=300)
    tags = alerting.version_tags(alerts, ["3"], NOW)
    assert set(tags) == {"3"} and "quality_drop" in tags["3"]["convrl.monitor.alert"]
    assert tags["3"]["convrl.monitor.alert_at"] == "2026-11-20T12:00:00Z"
    assert alerting.rollback_reason(alerts, "3", ["satisfaction_drop"]).startswith("monitor: [satisfaction_drop]")
    assert alerting.rollback_reason(alerts, "2", ["quality_drop"]) is None  # not the champion's traffic
    assert alerting.rollback_reason(alerts, "3", ["empty_rise"]) is None

    import requests

    calls = []

    class Resp:
        def __init__(self, code):
            self.status_code, self.text = code, "busy"

    def post(url, json, timeout):
        calls.append(json)
        return Resp(503 if len(calls) == 1 else 200)

    monkeypatch.setattr(requests, "post", post)
    ok, detail = alerting.post_webhook("http://hooks.example/x", alerts, "serving", backoff=0.0)
    assert ok and detail == "HTTP 200" and len(calls) == 2  # one retry after the 503
    assert calls[0]["text"].startswith("convrl monitor (serving)") and len(calls[0]["alerts"]) == len(alerts)

    def down(url, json, timeout):
        raise requests.ConnectionError("refused")

    monkeypatch.setattr(requests, "post", down)
    ok, detail = alerting.post_webhook("http://hooks.example/x", alerts, "serving", retries=2, backoff=0.0)
    assert not ok and "refused" in detail


def test_daily_figure_draws_each_metric(tmp_path):
    b0, c0, _ = window_bounds(NOW, 1, 7)
    df = pd.concat([_scored(40, b0, 150, 0.6, rating=4.0, seed=1, version="2"),
                    _scored(20, c0, 20, 0.5, rating=3.5, seed=2, version="3")], ignore_index=True)
    daily = daily_summary(df)
    fig = daily_figure(daily, current_start=c0)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 8 and "thumbs-up rate" not in titles  # no thumbs given: no empty panel
    assert "replies insulting the user" in titles
    fig.savefig(tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 5000
    with_reaction = daily_summary(df.assign(reaction=3.5))
    assert "satisfaction read from answers (1-5)" in [ax.get_title() for ax in daily_figure(with_reaction).axes]
    with pytest.raises(ValueError, match="no metric"):
        daily_figure(daily[["model_version", "day"]])


def test_monitor_config_validation():
    from convrl.config import ConfigError

    with pytest.raises(ConfigError, match="rollback_alerts"):
        load_config("tiny", ["monitor.rollback_alerts=[bogus]"])
    with pytest.raises(ConfigError, match="ab_primary"):
        load_config("tiny", ["monitor.ab_primary=happiness"])
    with pytest.raises(ConfigError, match="webhook"):
        load_config("tiny", ["monitor.webhook=ftp://x"])


def _reaction_model():
    from convrl.rewards.reactions import ReactionModel

    good = [("Booked! Your reference number is R{i}.", "Thanks, that's perfect!", 5.0),
            ("Here is a quiet cafe in the centre.", "Great, thank you so much.", 4.5)]
    bad = [("Sorry, I can't find that.", "No, that's wrong, I said the centre.", 1.0),
           ("Unfortunately there are none.", "That is not what I asked, again.", 1.5)]
    convs = []
    for i in range(40):
        msgs = [{"role": "user", "content": "I need a table for two."}]
        for bot, user, score in good if i % 2 else bad:
            msgs += [{"role": "assistant", "content": bot.format(i=i), "ratings": {"satisfaction": score}},
                     {"role": "user", "content": user}]
        convs.append(msgs)
    return ReactionModel.fit(convs)


def test_reaction_reads_how_the_user_answered_each_reply(scorer, panel, personas):
    from convrl.monitoring.scoring import next_user_turns

    df = normalise_turns(served(4, NOW - pd.Timedelta(hours=5), 2, turns=3))
    nxt = next_user_turns(df)
    for i, row in df.iterrows():
        later = df[(df["session_id"] == row["session_id"]) & (df["timestamp"] > row["timestamp"])]
        if later.empty:
            assert nxt[i] is None                     # a session's last reply: nobody answered it yet
        else:
            first = later.sort_values("timestamp").iloc[0]
            assert nxt[i] == [m for m in first["messages"] if m["role"] == "user"][-1]["content"]
    # The same replies, answered with thanks in one session and with corrections in another.
    happy, upset = df[df["session_id"] == df["session_id"].iloc[0]].copy(), None
    upset = happy.assign(session_id="upset", trace_id=happy["trace_id"] + "-u")
    for frame, answer in ((happy, "Thanks, that's perfect!"), (upset, "No, that's wrong, I said the centre.")):
        frame["messages"] = [[*m[:-1], {"role": "user", "content": answer}] if k else m
                             for k, m in enumerate(frame.sort_values("timestamp")["messages"])]
    both = pd.concat([happy, upset], ignore_index=True)
    personas_by_id = {p.persona_id: p for p in personas}
    scored = score_turns(both, scorer, panel, personas_by_id, reaction=_reaction_model())
    r = scored.groupby("session_id")["reaction"]
    assert r.apply(lambda s: s.isna().sum()).eq(1).all()            # the last turn of each session
    assert r.mean()[happy["session_id"].iloc[0]] > r.mean()["upset"]
    assert "reaction" in daily_summary(scored).columns
    assert "reaction" not in score_turns(both, scorer, panel, personas_by_id)  # no model, no column


def test_reaction_drop_raises_a_satisfaction_alert():
    mon = load_config("tiny").monitor
    b0, c0, _ = window_bounds(NOW, mon.window_days, mon.baseline_days)
    rng = np.random.default_rng(5)

    def frame(n, start, hours, mean, seed):
        df = _scored(n, start, hours, composite=0.6, seed=seed)
        return df.assign(reaction=rng.normal(mean, 0.2, len(df)))

    base = frame(80, b0, 24 * 6, 3.5, 1)
    alerts, _ = detect_alerts(pd.concat([base, frame(40, c0, 20, 3.5, 2)], ignore_index=True), mon, NOW,
                              n_bootstrap=400)
    assert alerts == [], [a.message for a in alerts]
    alerts, table = detect_alerts(pd.concat([base, frame(40, c0, 20, 3.1, 3)], ignore_index=True), mon, NOW,
                                  n_bootstrap=400)
    assert {(a.kind, a.metric) for a in alerts} == {("satisfaction_drop", "reaction")}
    assert all(a.margin == mon.reaction_margin for a in alerts)
