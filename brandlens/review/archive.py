"""The scored archive as the review app sees it: one DuckDB table, filters, seek pages, charts' figures.

At start the Parquet dataset (``brandlens.query.connect``'s view ``scores``) is
copied once into an in-memory DuckDB table ``posts`` (without embeddings) with
three helper columns: ``_row`` (the row's number in the dataset's file order, the sort tie-breaker),
``_uncertainty`` (distance to the decision threshold, for the uncertain-first
queue) and ``_brand_labels`` (the brands a row reports: its ``brands`` column
where the archive has one, else its label when a brand was found). Every page
is then a seek query (:mod:`brandlens.review.paging`) on that table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from brandlens.errors import ConfigError
from brandlens.review import paging
from schemas import scores as schema

log = logging.getLogger(__name__)

BANDS = {  # confidence bands: (min inclusive, max exclusive)
    "high": (0.9, None),
    "medium": (0.6, 0.9),
    "low": (None, 0.6),
}
STATUSES = ("uncorrected", "corrected", "right", "wrong")
# Columns the localisation and quality work add; not carried input columns.
BRANDS = "brands"
BOX = "box"
BRAND_SCORE = "brand_score"
KNOWN = schema.RESERVED | {BRANDS, BOX, BRAND_SCORE}


@dataclass
class Filters:
    brand: str = ""
    date_from: str = ""
    date_to: str = ""
    band: str = ""
    conf_min: float | None = None
    conf_max: float | None = None
    status: str = ""
    model_version: str = ""
    carried: dict[str, str] = field(default_factory=dict)  # column -> text it contains (case-insensitive)


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    total: int
    start: int              # 0-based position of the first row in the filtered order
    next_cursor: str | None
    prev_cursor: str | None


@dataclass(frozen=True)
class ModelInfo:
    labels: tuple[str, ...]
    neither: str | None
    thresholds: dict[str, float]  # model version -> brand threshold (absent: argmax)


def read_runs(scores: str) -> list[dict]:
    """The scoring runs' summaries beside the scores folder (``<archive>/runs/*/summary.json``)."""
    runs_dir = Path(scores.rstrip("/")).parent / "runs"
    out = []
    for path in sorted(runs_dir.glob("*/summary.json")) if runs_dir.is_dir() else ():
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("run summary %s unreadable (%s); its lineage is not shown", path, exc)
    return out


def model_info(score_columns: list[str], runs: list[dict], card: dict | None) -> ModelInfo:
    """Labels, 'neither' class and thresholds from the model card and the runs' summaries."""
    models = [r.get("model") or {} for r in runs] + ([card] if card else [])
    labels, thresholds, neither = [], {}, None
    for m in models:
        labels += [label for label in m.get("labels") or () if label not in labels]
        neither = m.get("neither_label", neither) if "neither_label" in m else neither
        if m.get("threshold") is not None and m.get("version_id"):
            thresholds[m["version_id"]] = float(m["threshold"])
    by_column = {schema.score_column(label): label for label in labels}
    labels = tuple(by_column.get(c, c[len("score_"):]) for c in score_columns)
    if neither is None and not models and "neither" in labels:
        neither = "neither"
    return ModelInfo(labels, neither, thresholds)


def _q(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


class Archive:
    def __init__(self, scores: str, card: dict | None = None):
        from brandlens.query import connect

        started = time.monotonic()
        self.scores = scores
        self._db = connect(scores)
        self._db.execute("SET enable_progress_bar = false")
        described = self._db.execute("DESCRIBE scores").fetchall()
        self.types = {name: str(kind) for name, kind, *_ in described}
        missing = [f.name for f in schema.FIXED_FIELDS if f.name not in self.types]
        if missing:
            raise ConfigError(f"{scores} is not a scoring output: no column(s) {', '.join(missing)}")
        self.score_columns = [c for c in self.types if c.startswith("score_")]
        self.runs = read_runs(scores)
        self.model = model_info(self.score_columns, self.runs, card)
        self.brand_columns = [c for c, label in zip(self.score_columns, self.model.labels) if label != self.model.neither]
        self.carried = [c for c, kind in self.types.items()
                        if c not in KNOWN and not c.startswith("score_") and kind == "VARCHAR"]
        self.has_brands = BRANDS in self.types and "label" in self.types[BRANDS]
        self.has_box = BOX in self.types
        self._materialize()
        self._db.execute("CREATE TABLE corrections (post_id VARCHAR PRIMARY KEY, verdict VARCHAR, labels VARCHAR[], who VARCHAR, corrected_at VARCHAR)")
        self._lock = threading.Lock()
        self.rows = self._db.execute("SELECT count(*) FROM posts").fetchone()[0]
        low, high = self._db.execute(f"SELECT min({schema.PARTITION}), max({schema.PARTITION}) FROM posts").fetchone()
        self.dates = (str(low or ""), str(high or ""))
        self.model_versions = [r[0] for r in self._db.execute(
            "SELECT model_version FROM posts GROUP BY 1 ORDER BY max(scored_at) DESC LIMIT 100").fetchall()]
        self.load_seconds = round(time.monotonic() - started, 2)
        log.info("review: %d rows from %s in %.1f s", self.rows, scores, self.load_seconds)

    # --- loading -------------------------------------------------------------------------

    def _uncertainty_sql(self) -> str:
        brand = (_q(BRAND_SCORE) if BRAND_SCORE in self.types else
                 f"greatest({', '.join(map(_q, self.brand_columns))})" if self.brand_columns else None)
        all_scores = ", ".join(map(_q, self.score_columns))
        margin = f"greatest({all_scores}) - list_sort([{all_scores}], 'DESC')[2]" if len(self.score_columns) > 1 else "1.0"
        cases = " ".join(f"WHEN ? THEN {t!r}" for t in self.model.thresholds.values())
        if brand is None or not cases:
            return f"CAST({margin} AS DOUBLE)"
        return (f"CAST(coalesce(abs({brand} - CASE model_version {cases} END), {margin}) AS DOUBLE)")

    def _materialize(self) -> None:
        exclude = f" EXCLUDE ({schema.EMBEDDING})" if schema.EMBEDDING in self.types else ""
        brand_labels = ("list_transform(coalesce(brands, []), lambda b: b.label)" if self.has_brands else
                        "CASE WHEN brand_found THEN [label] ELSE [] END")
        sql = (f"CREATE TABLE posts AS SELECT *, {self._uncertainty_sql()} AS _uncertainty, "
               f"CAST({brand_labels} AS VARCHAR[]) AS _brand_labels, "
               f"row_number() OVER () AS _row "
               f"FROM (SELECT *{exclude} FROM scores) ORDER BY confidence DESC, _row")
        self._db.execute(sql, list(self.model.thresholds))

    def cursor(self):
        """A connection for one request: DuckDB cursors on one database are safe across threads."""
        return self._db.cursor()

    # --- filters and pages ---------------------------------------------------------------

    def where(self, f: Filters) -> tuple[str, list]:
        terms, params = ["TRUE"], []
        if f.brand:
            terms.append("(label = ? OR list_contains(_brand_labels, ?))")
            params += [f.brand, f.brand]
        for value, op in ((f.date_from, ">="), (f.date_to, "<=")):
            if value:
                terms.append(f"{schema.PARTITION} {op} CAST(? AS DATE)")
                params.append(_iso_date(value))
        low, high = BANDS.get(f.band, (None, None))
        low = f.conf_min if f.conf_min is not None else low
        high = f.conf_max if f.conf_max is not None else high
        if low is not None:
            terms.append("confidence >= ?")
            params.append(float(low))
        if high is not None:
            terms.append("confidence < ?" if f.conf_max is None else "confidence <= ?")
            params.append(float(high))
        if f.status == "uncorrected":
            terms.append("post_id NOT IN (SELECT post_id FROM corrections)")
        elif f.status == "corrected":
            terms.append("post_id IN (SELECT post_id FROM corrections)")
        elif f.status in ("right", "wrong"):
            terms.append("post_id IN (SELECT post_id FROM corrections WHERE verdict = ?)")
            params.append(f.status)
        if f.model_version:
            terms.append("model_version = ?")
            params.append(f.model_version)
        for column, text in f.carried.items():
            if column not in self.carried:
                raise ConfigError(f"no carried column {column!r}")
            if text:
                terms.append(f"contains(lower({_q(column)}), lower(?))")
                params.append(text)
        return " AND ".join(terms), params

    def page(self, f: Filters, sort: paging.Sort, size: int, after: str | None = None, before: str | None = None,
             last: bool = False) -> Page:
        where, params = self.where(f)
        con = self.cursor()
        reverse = bool(before) or last
        seek, seek_params = "TRUE", []
        if after or before:
            seek, seek_params = paging.seek_condition(sort, paging.decode_cursor(after or before, sort), reverse=bool(before))
        columns = self.grid_columns()
        sql = f"SELECT {columns} FROM posts WHERE {where} AND {seek} ORDER BY {paging.order_by(sort, reverse)} LIMIT {int(size)}"
        rows = _dicts(con.execute(sql, params + seek_params))
        verdicts = dict(con.execute("SELECT post_id, verdict FROM corrections WHERE list_contains(?, post_id)",
                                    [[r["post_id"] for r in rows]]).fetchall()) if rows else {}
        for row in rows:
            row["_verdict"] = verdicts.get(row["post_id"])
        rows = rows[:size]
        if reverse:
            rows.reverse()
        total = con.execute(f"SELECT count(*) FROM posts WHERE {where}", params).fetchone()[0]
        if rows:
            first = [rows[0][c] for c in sort.columns()]
            before_sql, before_params = paging.seek_condition(sort, first, reverse=True)
            start = con.execute(f"SELECT count(*) FROM posts WHERE {where} AND {before_sql}", params + before_params).fetchone()[0]
        else:
            start = 0
        has_next, has_prev = start + len(rows) < total, start > 0
        token = lambda row: paging.encode_cursor([row[c] for c in sort.columns()])  # noqa: E731
        return Page(rows, total, start, token(rows[-1]) if rows and has_next else None,
                    token(rows[0]) if rows and has_prev else None)

    def grid_columns(self) -> str:
        wanted = ["_row", "post_id", "label", "confidence", schema.PARTITION, "model_version", "_uncertainty",
                  "_brand_labels", *self.score_columns, *self.carried[:4]]
        wanted += [c for c in (BRAND_SCORE, BOX, BRANDS) if c in self.types]
        return ", ".join(map(_q, wanted))

    def post(self, post_id: str, model_version: str | None = None) -> list[dict]:
        """The post's rows, one per model version, the chosen (else latest scored) first."""
        rows = _dicts(self.cursor().execute(
            "SELECT * EXCLUDE (_brand_labels) FROM posts WHERE post_id = ? ORDER BY model_version = ? DESC, scored_at DESC",
            [post_id, model_version or ""]))
        return rows

    def image_uri(self, post_id: str) -> str | None:
        row = self.cursor().execute("SELECT image_uri FROM posts WHERE post_id = ? LIMIT 1", [post_id]).fetchone()
        return row[0] if row else None

    def next_uncertain(self, exclude: str = "") -> str | None:
        """The uncorrected post nearest the threshold under the newest model."""
        if not self.model_versions:
            return None
        row = self.cursor().execute(
            "SELECT post_id FROM posts WHERE post_id NOT IN (SELECT post_id FROM corrections) AND post_id <> ? "
            "AND model_version = ? ORDER BY _uncertainty, _row LIMIT 1", [exclude, self.model_versions[0]]).fetchone()
        return row[0] if row else None

    def run_of(self, row: dict) -> dict | None:
        """The run that wrote ``row``: same model version and scoring time."""
        scored = row.get(schema.SCORED_AT)
        for run in self.runs:
            if (run.get("model") or {}).get("version_id") != row.get("model_version"):
                continue
            try:
                when = dt.datetime.fromisoformat(run.get("scored_at", ""))
            except ValueError:
                continue
            if scored is not None and abs((when - scored).total_seconds()) < 1e-3:
                return run
        return None

    # --- corrections --------------------------------------------------------------------

    def note_corrections(self, corrections) -> None:
        with self._lock:
            con = self.cursor()
            for c in corrections:
                con.execute("INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?, ?)",
                            [c.post_id, c.verdict, list(c.labels), c.who, c.at])

    def corrections_count(self) -> dict[str, int]:
        rows = self.cursor().execute("SELECT verdict, count(*) FROM corrections GROUP BY 1").fetchall()
        return {v: n for v, n in rows}

    # --- charts' figures ----------------------------------------------------------------

    def brand_days(self, f: Filters) -> list[tuple]:
        where, params = self.where(f)
        return self.cursor().execute(
            f"SELECT {schema.PARTITION}, b, count(*) FROM (SELECT {schema.PARTITION}, unnest(_brand_labels) AS b FROM posts "
            f"WHERE {where}) GROUP BY 1, 2 ORDER BY 1, 2", params).fetchall()

    def label_sets(self, f: Filters) -> list[tuple[list[str], int]]:
        where, params = self.where(f)
        return self.cursor().execute(
            f"SELECT list_sort(_brand_labels), count(*) FROM posts WHERE {where} AND len(_brand_labels) > 0 GROUP BY 1 ORDER BY 2 DESC",
            params).fetchall()


def _iso_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise ConfigError(f"not a date (YYYY-MM-DD): {text[:40]!r}") from None


def _dicts(cursor) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]

