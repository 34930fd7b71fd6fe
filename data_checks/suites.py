"""Great Expectations suites for the canonical turn and persona tables.

One function per suite, each returning a ``gx.ExpectationSuite`` built from
``gx.expectations.*`` classes. Two suites validate the tables as stored; three
validate small frames derived from them with pandas (one row per
conversation, per split, per persona), because GX's row-level expectations
cannot express "each conversation lies in one split" or "turn indices are
contiguous" directly, while a derived row per conversation makes every
failure point at the offending conversation. The derived frames are built by
the ``*_frame`` functions here so the suites and their inputs stay together.

Usage (normally through :func:`convrl.data_checks.runner.run_checks`)::

    from convrl.data_checks import suites
    suite = suites.turns_suite(max_text_chars=4000)
    frame = suites.conversation_frame(turns)  # input for suites.conversation_suite()

Each expectation carries a human ``description`` (shown in the report) and
``meta["order"]``, since GX returns results in its own order and the report
should follow the order the checks are written in.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402

# The same patterns ingest redacts with (convrl.data.pii), so a check failure means redaction missed
# something rather than the two disagreeing on what an e-mail is. Both are plain
# Python `re` syntax, which is what GX's pandas engine (`Series.str.contains`) uses.
from convrl.data.pii import EMAIL_REGEX, IPV4_REGEX, URL_SECRET_REGEX  # noqa: E402
from convrl.data.schema import ACTS, EMOTIONS, PERSONA_COLUMNS, ROLES, SPLITS, TURN_COLUMNS  # noqa: E402

SUITE_NAMES = ("turns", "conversations", "splits", "personas", "persona_fields")

E = gx.expectations


def _suite(name: str, expectations: list) -> gx.ExpectationSuite:
    for i, exp in enumerate(expectations):
        exp.meta = {**(exp.meta or {}), "order": i}
    return gx.ExpectationSuite(name=name, expectations=expectations)


# ------------------------------------------------------------------ turns

def turns_suite(max_text_chars: int = 4000) -> gx.ExpectationSuite:
    """Row-level checks on the turn table exactly as ingest wrote it."""
    required = ["conversation_id", "role", "text", "source", "split"]
    exps = [E.ExpectTableColumnsToMatchOrderedList(
        column_list=list(TURN_COLUMNS),
        description="columns match convrl.data.schema.TURN_COLUMNS, in order")]
    exps += [E.ExpectColumnValuesToNotBeNull(column=c, description=f"every turn has a {c}")
             for c in required]
    exps += [
        E.ExpectColumnValuesToBeInSet(column="role", value_set=list(ROLES),
                                      description=f"role is one of {', '.join(ROLES)}"),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS),
                                      description=f"split is one of {', '.join(SPLITS)}"),
        E.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=1, max_value=max_text_chars,
            description=f"text is non-empty and at most {max_text_chars} characters"),
        # Nulls are skipped by GX's column-map expectations, which is what "when known" means.
        E.ExpectColumnValuesToBeInSet(column="emotion", value_set=list(EMOTIONS),
                                      description="emotion, when known, is an emotion label"),
        E.ExpectColumnValuesToBeInSet(column="act", value_set=list(ACTS),
                                      description="dialogue act, when known, is a known act"),
        E.ExpectColumnValuesToBeBetween(column="feedback_rating", min_value=1, max_value=5,
                                        description="feedback rating, when present, lies in 1-5"),
        E.ExpectColumnValuesToBeInSet(column="feedback_thumb", value_set=[0, 1],
                                      description="feedback thumb, when present, is 0 or 1"),
        E.ExpectColumnValuesToBeBetween(column="turn_index", min_value=0,
                                        description="turn_index is non-negative"),
        E.ExpectCompoundColumnsToBeUnique(
            column_list=["conversation_id", "turn_index"],
            description="(conversation_id, turn_index) identifies one turn"),
        E.ExpectColumnValuesToNotMatchRegex(
            column="text", regex=EMAIL_REGEX,
            description="no e-mail address survived PII redaction"),
        E.ExpectColumnValuesToNotMatchRegex(
            column="text", regex=IPV4_REGEX,
            description="no IPv4 address survived PII redaction"),
        E.ExpectColumnValuesToNotMatchRegex(
            column="text", regex=URL_SECRET_REGEX,
            description="no secret in a URL query string (access_token=, X-Amz-Signature=, ...) survived "
                        "PII redaction"),
    ]
    return _suite("turns", exps)


# ------------------------------------------------------------------ conversations

CONVERSATION_COLUMNS = ["conversation_id", "n_turns", "n_splits", "splits", "contiguous",
                        "has_user", "turn_indices"]


def conversation_frame(turns: pd.DataFrame) -> pd.DataFrame:
    """One row per conversation: n_turns, n_splits, contiguous, has_user.

    ``splits`` and ``turn_indices`` are kept so a failure's sample shows the evidence.
    """
    needed = {"conversation_id", "turn_index", "role", "split"}
    if not needed <= set(turns.columns) or turns.empty:
        # The turns suite already reports missing columns; an empty frame keeps this one quiet.
        return pd.DataFrame({c: pd.Series(dtype="object") for c in CONVERSATION_COLUMNS})
    t = turns.dropna(subset=["conversation_id"])
    idx = pd.to_numeric(t["turn_index"], errors="coerce")
    g = idx.groupby(t["conversation_id"], sort=True)
    out = pd.DataFrame({
        "n_turns": t.groupby("conversation_id", sort=True).size(),
        "n_splits": t.groupby("conversation_id", sort=True)["split"].nunique(),
        # 0..n-1 exactly: n distinct values from 0 to n-1 (also rules out NaN indices).
        "contiguous": (g.min() == 0) & (g.max() == g.size() - 1) & (g.nunique() == g.size())
                      & (g.count() == g.size()),
        "has_user": (t["role"] == "user").groupby(t["conversation_id"], sort=True).any(),
    })
    out = out.rename_axis("conversation_id").reset_index()
    out["contiguous"] = out["contiguous"].astype(bool)
    out["has_user"] = out["has_user"].astype(bool)
    # The evidence columns cost a Python call per group, so only failing rows get them.
    bad = out.loc[(out["n_splits"] != 1) | ~out["contiguous"] | ~out["has_user"], "conversation_id"]
    sub = t[t["conversation_id"].isin(set(bad))]
    ev = sub.groupby("conversation_id").agg(
        splits=("split", lambda s: ",".join(sorted(str(v) for v in s.dropna().unique()))),
        turn_indices=("turn_index", lambda s: _short_list(sorted(s.tolist()))))
    out = out.merge(ev, how="left", left_on="conversation_id", right_index=True)
    out[["splits", "turn_indices"]] = out[["splits", "turn_indices"]].astype("object")
    return out[CONVERSATION_COLUMNS]


def _short_list(values: list, limit: int = 20) -> str:
    shown = ",".join(str(v) for v in values[:limit])
    return shown + (f",... ({len(values)} total)" if len(values) > limit else "")


def conversation_suite() -> gx.ExpectationSuite:
    return _suite("conversations", [
        E.ExpectColumnValuesToBeBetween(
            column="n_splits", min_value=1, max_value=1,
            description="no split leakage: each conversation lies in exactly one split"),
        E.ExpectColumnValuesToBeInSet(
            column="contiguous", value_set=[True],
            description="turn_index runs 0..n-1 within each conversation, with no gaps"),
        E.ExpectColumnValuesToBeInSet(
            column="has_user", value_set=[True],
            description="each conversation has at least one user turn"),
    ])


# ------------------------------------------------------------------ splits

SPLIT_COLUMNS = ["split", "n_conversations", "n_turns"]


def split_frame(turns: pd.DataFrame) -> pd.DataFrame:
    """One row per split, every expected split included (with zeros when absent).

    Absent splits become rows rather than a set-containment check so that the
    failure counts and samples name the missing split itself.
    """
    if not {"conversation_id", "split"} <= set(turns.columns):
        counts = pd.DataFrame(columns=["n_conversations", "n_turns"])
    else:
        g = turns.dropna(subset=["split"]).groupby("split")
        counts = pd.DataFrame({"n_conversations": g["conversation_id"].nunique(),
                               "n_turns": g.size()})
    # Unknown split names are already caught by the turns suite; keep them visible here too.
    order = list(SPLITS) + sorted(str(s) for s in counts.index if s not in SPLITS)
    counts = counts.reindex(order).fillna(0).astype("int64")
    return counts.rename_axis("split").reset_index()[SPLIT_COLUMNS]


def split_suite(min_conversations_per_split: int = 5) -> gx.ExpectationSuite:
    return _suite("splits", [
        E.ExpectColumnValuesToBeBetween(
            column="n_conversations", min_value=1,
            description=f"every split ({', '.join(SPLITS)}) is present"),
        E.ExpectColumnValuesToBeBetween(
            column="n_conversations", min_value=min_conversations_per_split,
            description=f"every split has at least {min_conversations_per_split} conversations"),
    ])


# ------------------------------------------------------------------ personas

def persona_suite() -> gx.ExpectationSuite:
    return _suite("personas", [
        # A set, not an ordered list: persona columns are looked up by name everywhere.
        E.ExpectTableColumnsToMatchSet(
            column_set=list(PERSONA_COLUMNS), exact_match=True,
            description="columns are convrl.data.schema.PERSONA_COLUMNS"),
        E.ExpectColumnValuesToNotBeNull(column="persona_id",
                                        description="every persona has a persona_id"),
        E.ExpectColumnValuesToBeUnique(column="persona_id",
                                       description="persona_id is unique"),
        E.ExpectColumnValuesToNotBeNull(column="name", description="every persona has a name"),
    ])


# Column -> the JSON type Persona.from_row expects after json.loads.
PERSONA_JSON_FIELDS = {"traits": dict, "emotional_range": list, "emotion_map": dict, "facts": list}


def persona_field_frame(personas: pd.DataFrame) -> pd.DataFrame:
    """One row per persona: for each JSON column, whether it parses to the right type."""
    cols = ["persona_id"] + [f"{c}_ok" for c in PERSONA_JSON_FIELDS] + list(PERSONA_JSON_FIELDS)
    rows = []
    for rec in personas.to_dict("records"):
        row = {"persona_id": rec.get("persona_id")}
        for col, typ in PERSONA_JSON_FIELDS.items():
            raw = rec.get(col)
            row[f"{col}_ok"] = _json_is(raw, typ)
            row[col] = raw
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _json_is(raw, typ: type) -> bool:
    if not isinstance(raw, str):
        return False
    try:
        return isinstance(json.loads(raw), typ)
    except ValueError:
        return False


def persona_field_suite() -> gx.ExpectationSuite:
    return _suite("persona_fields", [
        E.ExpectColumnValuesToBeInSet(
            column=f"{col}_ok", value_set=[True],
            description=f"{col} is a JSON {'object' if typ is dict else 'list'}")
        for col, typ in PERSONA_JSON_FIELDS.items()
    ])
