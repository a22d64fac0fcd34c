"""Query the scoring job's Parquet output with DuckDB: ready-made summaries or any SQL.

The dataset is exposed as a view ``scores`` over the archive's own committed part
files (``brandlens.scores_archive``: those its run manifests list), with the Hive
partition column ``dt`` added from the paths. Anything else under the folder (foreign
Parquet files, files of a commit in progress) is left out and named; an interrupted
commit is finished first. Paths are passed as a file list, never as a glob, so a folder
name with ``[1]`` or ``*`` in it is read as named.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from brandlens.errors import ConfigError

# One row per (post, brand) of the multi-label ``brands`` column (schemas/scores.py).
_MENTIONS = "WITH m AS (SELECT DISTINCT post_id, b.label AS brand FROM (SELECT post_id, unnest(brands) AS b FROM scores)) "

SUMMARIES = {
    "labels-per-day": (
        "Posts per label per day",
        "SELECT dt, label, count(*) AS posts FROM scores GROUP BY dt, label ORDER BY dt, label",
    ),
    "top-per-brand": (
        "The most confident posts per brand",
        "SELECT label, rank, post_id, image_uri, CAST(round(confidence, 5) AS DECIMAL(9, 5)) AS confidence FROM ("
        " SELECT *, row_number() OVER (PARTITION BY label ORDER BY confidence DESC, post_id) AS rank"
        " FROM scores WHERE brand_found) WHERE rank <= {top} ORDER BY label, rank",
    ),
    "brand-share": (
        "Share of posts with any brand",
        "SELECT count(*) AS posts, sum(CASE WHEN brand_found THEN 1 ELSE 0 END) AS posts_with_brand,"
        " round(avg(CASE WHEN brand_found THEN 1.0 ELSE 0.0 END), 4) AS share FROM scores",
    ),
    "share-of-voice": (
        "Posts per brand, every brand in a post counted (share of all brand mentions; alone or with other brands)",
        _MENTIONS + "SELECT brand, count(*) AS posts, round(count(*) / (SELECT count(*) FROM m), 4) AS share_of_voice,"
        " sum(CASE WHEN n = 1 THEN 1 ELSE 0 END) AS alone, sum(CASE WHEN n > 1 THEN 1 ELSE 0 END) AS with_others"
        " FROM m JOIN (SELECT post_id, count(*) AS n FROM m GROUP BY post_id) USING (post_id)"
        " GROUP BY brand ORDER BY posts DESC, brand",
    ),
    "co-occurrence": (
        "Brands reported together in the same post",
        _MENTIONS + "SELECT a.brand, b.brand AS with_brand, count(*) AS posts FROM m a JOIN m b"
        " ON a.post_id = b.post_id AND a.brand < b.brand GROUP BY a.brand, b.brand ORDER BY posts DESC, a.brand, with_brand",
    ),
}


@dataclass(frozen=True)
class QueryConfig:
    scores: str
    summaries: tuple[str, ...]
    sql: str | None
    top: int
    output_format: str

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scores", required=True, help="the scoring job's Parquet output folder")
        parser.add_argument("--summary", action="append", choices=sorted(SUMMARIES), default=None,
                            help="a ready-made summary (repeatable; default: all)")
        parser.add_argument("--sql", default=None, help="any SQL over the view 'scores' (then no summaries unless asked)")
        parser.add_argument("--top", type=int, default=3, help="posts per brand in top-per-brand (default %(default)s)")
        parser.add_argument("--format", dest="output_format", choices=("table", "csv", "json"), default="table")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "QueryConfig":
        summaries = tuple(args.summary) if args.summary else (() if args.sql else tuple(SUMMARIES))
        return cls(args.scores, summaries, args.sql, args.top, args.output_format)


def connect(scores: str, skipped: list | None = None):
    """A DuckDB connection with the view ``scores`` over the archive's own part files.

    The files left out are appended to ``skipped`` when given (else logged).
    """
    import logging

    import duckdb

    from brandlens.scores_archive import own_files

    root = scores.rstrip("/")
    if "://" not in root and not Path(root).is_dir():
        raise ConfigError(f"no scoring output at {scores}")
    own, other = own_files(root)
    if skipped is not None:
        skipped.extend(other)
    elif other:
        logging.getLogger(__name__).warning("left out %d files that are not this archive's part files: %s",
                                            len(other), ", ".join(other[:5]))
    if not own:
        raise ConfigError(f"no committed part files under {scores}" + (f" ({len(other)} other files skipped)" if other else ""))
    con = duckdb.connect()
    if "://" in root:
        con.execute("INSTALL httpfs; LOAD httpfs;")
    files = ", ".join("'" + path.replace("'", "''") + "'" for path in own)
    try:
        con.execute(f"CREATE VIEW scores AS SELECT * FROM read_parquet([{files}], hive_partitioning = true, union_by_name = true)")
    except duckdb.Error as exc:
        raise ConfigError(f"cannot read Parquet files under {scores}: {str(exc).splitlines()[0]}") from None
    return con


def run_query(con, sql: str) -> tuple[list[str], list[tuple]]:
    import duckdb

    try:
        cursor = con.execute(sql)
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {str(exc).splitlines()[0]}") from None
    return [d[0] for d in cursor.description], cursor.fetchall()


def format_rows(columns: list[str], rows: list[tuple], output_format: str) -> str:
    if output_format == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if output_format == "json":
        import json

        return "\n".join(json.dumps(dict(zip(columns, row)), default=str) for row in rows)
    cells = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def query(config: QueryConfig, skipped: list | None = None) -> str:
    """Run the requested summaries and SQL; return the printable text (files left out go to ``skipped``)."""
    con = connect(config.scores, skipped)
    blocks = []
    for name in config.summaries:
        title, sql = SUMMARIES[name]
        columns, rows = run_query(con, sql.format(top=int(config.top)))
        blocks.append(f"## {title} ({name})\n{format_rows(columns, rows, config.output_format)}")
    if config.sql:
        columns, rows = run_query(con, config.sql)
        blocks.append(format_rows(columns, rows, config.output_format))
    return "\n\n".join(blocks)
