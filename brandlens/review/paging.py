"""Keyset ("seek") paging: a page is the rows after (or before) a cursor, never an OFFSET.

An OFFSET page needs every earlier row sorted first, so page 10,000 of a million-row
archive costs a full sort; a seek page is a top-N over the rows past the cursor,
as cheap at the end of the archive as at its start. Pure functions: SQL text and
parameters only.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    column: str       # a column of the posts table (already a safe identifier)
    descending: bool
    kind: str         # "float" | "date" | "int" | "str": how a cursor value is typed back


@dataclass(frozen=True)
class Sort:
    name: str
    title: str
    keys: tuple[Key, ...]  # the last key is unique per row, so the order is total

    def columns(self) -> list[str]:
        return [k.column for k in self.keys]


ROW = Key("_row", False, "int")
SORTS = {s.name: s for s in (
    Sort("confidence", "confidence, highest first", (Key("confidence", True, "float"), ROW)),
    Sort("confidence_asc", "confidence, lowest first", (Key("confidence", False, "float"), ROW)),
    Sort("date", "date, newest first", (Key("dt", True, "date"), ROW)),
    Sort("date_asc", "date, oldest first", (Key("dt", False, "date"), ROW)),
    Sort("uncertain", "uncertain first (nearest the threshold)", (Key("_uncertainty", False, "float"), ROW)),
)}


def order_by(sort: Sort, reverse: bool = False) -> str:
    return ", ".join(f'"{k.column}" {"ASC" if k.descending == reverse else "DESC"}' for k in sort.keys)


def seek_condition(sort: Sort, cursor: list, reverse: bool = False) -> tuple[str, list]:
    """SQL (and parameters) for "rows strictly after ``cursor`` in this order" (before, with ``reverse``).

    (a DESC, b ASC) after (va, vb) is ``a < va OR (a = va AND b > vb)``, spelled out per
    key so that mixed directions work. Sort keys are never NULL (the posts table sees to it).
    """
    clauses, params = [], []
    for i, key in enumerate(sort.keys):
        op = "<" if key.descending != reverse else ">"
        terms = [f'"{k.column}" = {_param(k)}' for k in sort.keys[:i]] + [f'"{key.column}" {op} {_param(key)}']
        clauses.append("(" + " AND ".join(terms) + ")")
        params += [_typed(k, v) for k, v in zip(sort.keys[: i + 1], cursor[: i + 1])]
    return "(" + " OR ".join(clauses) + ")", params


def _param(key: Key) -> str:
    return {"float": "CAST(? AS DOUBLE)", "date": "CAST(? AS DATE)", "int": "CAST(? AS BIGINT)"}.get(key.kind, "?")


def _typed(key: Key, value):
    if value is None:
        return None
    return {"float": float, "int": int, "date": str}.get(key.kind, str)(value)


def encode_cursor(values) -> str:
    plain = [v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(token: str, sort: Sort) -> list:
    """The cursor's values, or ValueError when the token is not one of ours for this sort."""
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError) as exc:
        raise ValueError("not a page cursor") from exc
    if not isinstance(values, list) or len(values) != len(sort.keys):
        raise ValueError("not a page cursor for this sort")
    try:
        return [_typed(k, v) for k, v in zip(sort.keys, values)]
    except (TypeError, ValueError) as exc:
        raise ValueError("not a page cursor for this sort") from exc
