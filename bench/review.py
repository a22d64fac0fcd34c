"""Review app paging on a million-row archive: seek pages against OFFSET pages, in one run.

    python -m bench.review [--rows 1000000] [--repeats 5]

Generates (outside the repository) an archive in the product's Parquet schema
(``schemas.scores``, with the localisation work's ``brands``/``box`` columns), loads it
as ``brandlens review`` does, and times the first, a middle and the last page per sort,
unfiltered and filtered: the query the app runs (a seek page after a cursor) against
the OFFSET query it replaces, and the whole HTTP page (query + HTML) through the app.
Writes ``bench/results/review.json`` and ``bench/results/review.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LABELS = ("acme", "zenith", "neither")
CARRIED = ("posted_at", "user", "source", "caption")
BOX_TYPE = pa.list_(pa.float32())  # x1, y1, x2, y2 normalised; null when no brand
BRANDS_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32()), ("box", BOX_TYPE), ("area", pa.float32())]))


def write_synthetic_archive(root: Path, rows: int, days: int = 30, image_uris: list[str] | None = None, seed: int = 0,
                            localisation: bool = True, start: dt.date = dt.date(2026, 10, 1)) -> Path:
    """``root/scores/dt=.../part-*.parquet`` in the product's schema; returns the scores folder.

    Scores are softmax draws; a post's brands are every brand over 0.3 (several per post
    now and then), each with a box; ``image_uris`` (cycled) name real files when given.
    """
    from schemas.scores import scores_schema

    rng = np.random.default_rng(seed)
    base = scores_schema(list(LABELS), list(CARRIED))
    if "box" in base.names:  # the product's schema has the localisation columns: drop them for an archive without
        schema = base if localisation else base.remove(base.get_field_index("box")).remove(base.get_field_index("brands"))
    else:
        schema = base.insert(base.get_field_index("score_neither") + 1, pa.field("box", BOX_TYPE)) if localisation else base
        if localisation:
            schema = schema.insert(schema.get_field_index("box") + 1, pa.field("brands", BRANDS_TYPE))
    scores_dir = root / "scores"
    per_day = -(-rows // days)
    for d in range(days):
        ids = np.arange(d * per_day, min(rows, (d + 1) * per_day))
        if not len(ids):
            break
        n = len(ids)
        day = start + dt.timedelta(days=d)
        p = rng.dirichlet((0.6, 0.6, 0.9), size=n).astype(np.float32)
        labels = np.array(LABELS)[p.argmax(1)]
        uris = [image_uris[i % len(image_uris)] for i in ids] if image_uris else [f"/archive/img/{i % 997}/{i}.jpg" for i in ids]
        columns = {
            "post_id": [f"post-{i:07d}" for i in ids],
            "image_uri": uris, "resolved_uri": uris,
            "content_hash": [f"{i:064x}" for i in ids],
            "label": labels, "confidence": p.max(1), "brand_score": p[:, :2].max(1), "brand_found": labels != "neither",
            "model_version": ["bl-synthetic"] * n, "backbone": ["efficientnet_lite2@synthetic"] * n,
            "scored_at": pa.array(np.full(n, np.datetime64("2026-11-30T00:00:00", "us")), pa.timestamp("us", tz="UTC")),
            "score_acme": p[:, 0], "score_zenith": p[:, 1], "score_neither": p[:, 2],
            "posted_at": [f"{day.isoformat()}T{10 + i % 12:02d}:00:00Z" for i in ids],
            "user": [f"user{i % 5000}" for i in ids], "source": np.where(ids % 3 == 0, "instagram", "flickr"),
            "caption": [f"a day out #{i}" for i in ids],
        }
        if localisation:
            corners = rng.uniform(0.05, 0.5, size=(n, 2, 2)).astype(np.float32)
            sizes = rng.uniform(0.15, 0.45, size=(n, 2, 2)).astype(np.float32)
            brands, top = [], []
            for k in range(n):
                found = [(j, float(p[k, j])) for j in (0, 1) if p[k, j] > 0.3]
                entries = [{"label": LABELS[j], "score": s, "box": [*corners[k, j], *(corners[k, j] + sizes[k, j])],
                            "area": float(sizes[k, j].prod())} for j, s in sorted(found, key=lambda f: -f[1])]
                brands.append(entries)
                top.append(entries[0]["box"] if entries else [])
            columns["box"], columns["brands"] = top, brands
        table = pa.table({f.name: columns[f.name] for f in schema}, schema=schema)
        folder = scores_dir / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-synthetic-00000-of-00001.parquet")
    return scores_dir


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 1)


def measure(scores: Path, repeats: int) -> dict:
    from brandlens.review import paging
    from brandlens.review.app import bind, create_app
    from brandlens.review.archive import Filters
    from brandlens.review.config import ReviewConfig

    import uvicorn

    t = time.perf_counter()
    app = create_app(ReviewConfig(str(scores), corrections=scores.parent / "bench-corrections.jsonl"))
    startup = time.perf_counter() - t
    archive = app.state.review.archive
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    cases = []
    filtered = (Filters(), {}), (Filters(brand="acme", date_from="2026-10-05", date_to="2026-10-25", band="high"),
                                 {"brand": "acme", "date_from": "2026-10-05", "date_to": "2026-10-25", "band": "high"})
    size = 48
    con = archive.cursor()
    try:
        for name in ("confidence", "date", "uncertain"):
            sort = paging.SORTS[name]
            for filters, params in filtered:
                where, wparams = archive.where(filters)
                total = con.execute(f"SELECT count(*) FROM posts WHERE {where}", wparams).fetchone()[0]
                middle_offset = (total // size // 2) * size
                key = con.execute(f"SELECT {', '.join(sort.columns())} FROM posts WHERE {where} ORDER BY "
                                  f"{paging.order_by(sort)} LIMIT 1 OFFSET {middle_offset - 1}", wparams).fetchone()
                cursor = paging.encode_cursor(list(key))
                cols = archive.grid_columns()
                offset_sql = f"SELECT {cols} FROM posts WHERE {where} ORDER BY {paging.order_by(sort)} LIMIT {size} OFFSET ?"
                pages = {"first": {}, "middle": {"after": cursor}, "last": {"last": True}}
                for position, kwargs in pages.items():
                    page = archive.page(filters, sort, size, **kwargs)
                    offset = {"first": 0, "middle": middle_offset, "last": max(0, total - size)}[position]
                    assert page.start == offset or position == "last", (name, position, page.start, offset)
                    query = {"sort": name, **params, **({"after": cursor} if position == "middle" else {}),
                             **({"last": "1"} if position == "last" else {})}
                    url = f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode(query)
                    cases.append({
                        "sort": name, "filtered": bool(params), "matching": total, "page": position, "offset": page.start,
                        "seek_ms": _median_ms(lambda: archive.page(filters, sort, size, **kwargs), repeats),
                        "offset_query_ms": _median_ms(lambda: con.execute(offset_sql, wparams + [offset]).fetchall(), repeats),
                        "http_page_ms": _median_ms(lambda: urllib.request.urlopen(url).read(), repeats),
                    })
    finally:
        server.should_exit = True
        thread.join(10)
    return {"rows": archive.rows, "startup_s": round(startup, 2), "load_s": archive.load_seconds, "page_size": size,
            "cases": cases}


def markdown(result: dict) -> str:
    lines = [f"Review app paging, {result['rows']:,} rows, {result['page_size']} posts a page "
             f"(median of {result['repeats']}; app start {result['startup_s']} s, of which loading {result['load_s']} s). "
             f"`{result['command']}`", "",
             "The seek page is what the app runs per page: the rows after the cursor, the matching count and the "
             "page's position (two counts); the OFFSET query is the rows query alone as an OFFSET page would run it; "
             "the whole HTTP page adds the HTML. The machine is shared (2 cores), so read ratios, not absolute times.", "",
             "| sort | filter | matching | page | seek page (app) ms | OFFSET query ms | OFFSET / seek | whole HTTP page ms |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for c in result["cases"]:
        ratio = c["offset_query_ms"] / max(c["seek_ms"], 1e-9)
        lines.append(f"| {c['sort']} | {'brand+dates+band' if c['filtered'] else 'none'} | {c['matching']:,} | {c['page']} "
                     f"| {c['seek_ms']} | {c['offset_query_ms']} | {ratio:.1f} | {c['http_page_ms']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the archive is generated (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="brandlens-review-bench-") as tmp:
        root = args.work_dir or Path(tmp)
        t = time.perf_counter()
        scores = write_synthetic_archive(root, args.rows)
        generated = round(time.perf_counter() - t, 1)
        result = {"command": f"python -m bench.review --rows {args.rows} --repeats {args.repeats}", "repeats": args.repeats,
                  "generate_s": generated, "cpu_count": os.cpu_count(), **measure(scores, args.repeats)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "review.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / "review.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
