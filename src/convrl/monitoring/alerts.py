"""Where alerts go: the log, a webhook, tags on the model version, and (guarded) a rollback.

The decisions are pure functions so they can be tested without a registry or a
network; the monitoring stage applies them (``convrl.stages.monitoring``):

* :func:`post_webhook` POSTs ``{"text": ..., "alerts": [...]}`` (the ``text`` key
  is what Slack/Teams incoming webhooks display), retrying with backoff; a dead
  webhook is reported, never fatal, because the alert is also logged and tagged.
* :func:`version_tags` says which registered versions get ``convrl.monitor.*`` tags.
* :func:`rollback_reason` returns why ``champion`` should roll back, or None: only
  alerts raised on the champion's own version, of a kind listed in
  ``monitor.rollback_alerts``, count; all-traffic alerts never roll back on their own.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from convrl.monitoring.windows import Alert

log = logging.getLogger("convrl.monitor")


def log_alerts(alerts: list[Alert]) -> None:
    for a in alerts:
        log.warning("ALERT %s", a.message)
    if not alerts:
        log.info("no alerts: every compared metric stayed within its margin")


def post_webhook(url: str, alerts: list[Alert], source: str, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 1.0) -> tuple[bool, str]:
    """(delivered, detail). Retries on connection errors and 5xx; a 4xx is not retried (the payload won't change)."""
    import requests

    if not alerts:
        return True, "nothing to send"
    payload = {"text": f"convrl monitor ({source}): {len(alerts)} alert(s)\n" + "\n".join(a.message for a in alerts),
               "source": source, "alerts": [a.to_dict() for a in alerts]}
    detail = ""
    for attempt in range(retries):
        try:
            r = requests.post(url, json=payload, timeout=timeout)
            if r.status_code < 300:
                return True, f"HTTP {r.status_code}"
            detail = f"HTTP {r.status_code}: {r.text[:200]}"
            if r.status_code < 500:
                break
        except requests.RequestException as exc:
            detail = f"{type(exc).__name__}: {exc}"
        if attempt + 1 < retries:
            time.sleep(backoff * 2 ** attempt)
    log.error("alert webhook %s failed after %d attempt(s): %s (alerts are still logged and tagged)",
              url, attempt + 1, detail)
    return False, detail


def version_tags(alerts: list[Alert], current_versions: list[str], now: pd.Timestamp) -> dict[str, dict[str, str]]:
    """Tags per model version: its own alerts, plus all-traffic alerts on every version served in the window."""
    out: dict[str, list[Alert]] = {}
    for a in alerts:
        for v in (current_versions if a.scope == "all" else [a.scope]):
            out.setdefault(str(v), []).append(a)
    stamp = pd.Timestamp(now).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {v: {"convrl.monitor.alert": ",".join(sorted({a.kind for a in al})),
                "convrl.monitor.alert_at": stamp,
                "convrl.monitor.alert_detail": " | ".join(a.message for a in al)[:4900]}
            for v, al in out.items()}


def rollback_reason(alerts: list[Alert], champion_version: str | None, kinds: list[str]) -> str | None:
    if not champion_version:
        return None
    hits = [a for a in alerts if a.scope == str(champion_version) and a.kind in kinds]
    if not hits:
        return None
    return "monitor: " + "; ".join(a.message for a in hits)
