"""Performance benchmark: how close the jobs come to what this machine can do.

One command generates N synthetic Instagram-size posts (640x640 JPEG + manifests) and measures,
each in its own process (time and peak RSS of the whole process tree from /proc):

1. the limit: read + decode + preprocess + backbone forward pass, tight batched loop, no Beam,
   best of several batch sizes and decode threads;
2. the naive approach: one eager preprocess and one model call per image;
3. the bottleneck job (``brandlens bottlenecks``, DirectRunner), cold cache;
4. the scoring job (``brandlens score``);
5. rescoring stored embeddings with the head only (``brandlens rescore``) on a larger synthetic set;
6. the bottleneck job again into a new output with everything cached;
7. the scoring job's peak memory at N and at 4N posts;

and writes the figures, ratios and goals to ``bench/RESULTS-performance.md``.

    .venv/bin/python -m bench.performance --n 1000
    .venv/bin/python -m bench.performance --n 60 --rescore-n 20000 --results /tmp/perf.md   # a quick check

Work files live in ``--work-dir`` (default /tmp/brandlens-perf), never in the repository.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from bench.perf_helpers import (Posts, generate_posts, last_progress, load_average, machine, render_report,
                                run_measured)

log = logging.getLogger("bench.performance")
REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS-performance.md")
DEFAULT_WORK_DIR = Path(os.environ.get("BRANDLENS_PERF_DIR", "/tmp/brandlens-perf"))
SCORED_AT = "2026-11-29T12:00:00Z"


def _python() -> str:
    return sys.executable


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("NO_GCE_CHECK", "true")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _cli(*args: str) -> list[str]:
    return [_python(), "-m", "brandlens.cli", *args]


# --------------------------------------------------------------------------- inner loops (own processes)

def _read_list(path: str) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line]


def inner_limit(args) -> dict:
    """Tight loops without Beam: serial batches, and decode/preprocess threads feeding the CNN."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from beam_jobs.common.images import prepare_image
    from brandlens.backbones.artifact import load_backbone
    from brandlens.imaging import decode_image
    from brandlens.preprocess import prepare

    backbone = load_backbone(args.artifact)
    fp = backbone.fingerprint
    paths = _read_list(args.images)[: args.count]

    def load(path):
        with open(path, "rb") as f:
            return prepare_image(decode_image(f.read()), fp.input_size, fp.crop_fraction, fp.resize_mode)

    # component costs, one image at a time
    sample = paths[: min(24, len(paths))]
    t = time.perf_counter()
    datas = [Path(p).read_bytes() for p in sample]
    rgbs = [decode_image(d) for d in datas]
    decode_ms = (time.perf_counter() - t) / len(sample) * 1e3
    load(sample[0])
    t = time.perf_counter()
    traced = [prepare_image(r, fp.input_size, fp.crop_fraction, fp.resize_mode) for r in rgbs]
    traced_ms = (time.perf_counter() - t) / len(sample) * 1e3
    prepare(rgbs[0], fp.input_size, fp.crop_fraction, fp.resize_mode)
    t = time.perf_counter()
    eager = [prepare(r, fp.input_size, fp.crop_fraction, fp.resize_mode) for r in rgbs]
    eager_ms = (time.perf_counter() - t) / len(sample) * 1e3
    parity = float(max(np.abs(a - b).max() for a, b in zip(traced, eager)))
    forward_ms = {}
    for b in sorted({1, *args.batch_sizes}):
        x = np.stack([traced[i % len(traced)] for i in range(b)])
        backbone.embed(x)
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < args.forward_seconds:
            backbone.embed(x)
            n += b
        forward_ms[b] = (time.perf_counter() - t) / n * 1e3

    results = []
    for b in args.batch_sizes:
        for threads in args.threads:
            t = time.perf_counter()
            if threads == 0:
                for i in range(0, len(paths), b):
                    backbone.embed(np.stack([load(p) for p in paths[i:i + b]]))
            else:
                with ThreadPoolExecutor(threads) as pool:
                    pending = pool.map(load, paths)
                    batch = []
                    for image in pending:
                        batch.append(image)
                        if len(batch) == b:
                            backbone.embed(np.stack(batch))
                            batch = []
                    if batch:
                        backbone.embed(np.stack(batch))
            seconds = time.perf_counter() - t
            results.append({"batch_size": b, "threads": threads, "images": len(paths), "seconds": seconds,
                            "images_per_s": len(paths) / seconds})
            print(f"limit batch {b} threads {threads}: {len(paths) / seconds:.1f} images/s", flush=True)
    best = max(results, key=lambda r: r["images_per_s"])
    return {"best": best, "configs": results, "decode_ms": decode_ms, "prepare_traced_ms": traced_ms,
            "prepare_eager_ms": eager_ms, "prepare_parity_max_abs": parity, "forward_ms_per_image": forward_ms}


def inner_naive(args) -> dict:
    """One image at a time: read, decode, eager preprocess, one model call (as the old flowers sample did)."""
    import numpy as np

    from brandlens.backbones.artifact import load_backbone
    from brandlens.imaging import decode_image

    backbone = load_backbone(args.artifact)
    paths = _read_list(args.images)[: args.count]
    backbone.embed(backbone.prepare(decode_image(Path(paths[0]).read_bytes()))[None])
    t = time.perf_counter()
    for path in paths:
        backbone.embed(np.expand_dims(backbone.prepare(decode_image(Path(path).read_bytes())), 0))
    seconds = time.perf_counter() - t
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}


def inner_artifact(args) -> dict:
    from brandlens.backbones.artifact import read_fingerprint
    from brandlens.config import BackboneConfig, default_artifact_root

    path = BackboneConfig(args.backbone, Path(args.artifacts) if args.artifacts else default_artifact_root()).materialize()
    fp = read_fingerprint(path)
    return {"path": str(path), "input_size": fp.input_size, "version": fp.version, "embedding_dim": fp.embedding_dim}


# --------------------------------------------------------------------------- stored embeddings for rescoring

def write_stored_embeddings(folder: Path, n: int, dim: int, labels: list[str], seed: int = 0,
                            rows_per_file: int = 50_000) -> Path:
    """A scoring output written with --write-embedding: ``n`` rows over a few dt= partitions (no CNN needed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import scores as schema

    stamp = folder / "stamp.json"
    wanted = json.dumps({"n": n, "dim": dim, "labels": labels, "seed": seed, "rows_per_file": rows_per_file})
    if stamp.is_file() and stamp.read_text() == wanted:
        return folder / "scores"
    shutil.rmtree(folder, ignore_errors=True)
    arrow = schema.scores_schema(labels, ["user", "caption"], with_embedding=True, embedding_dim=dim)
    rng = np.random.default_rng(seed)
    scored_at = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    for f, start in enumerate(range(0, n, rows_per_file)):
        m = min(rows_per_file, n - start)
        ids = [f"s{start + i:09d}" for i in range(m)]
        emb = np.clip(rng.gamma(0.6, 0.8, (m, dim)), 0, 6).astype(np.float32)
        scores = rng.dirichlet(np.ones(len(labels)), m).astype(np.float32)
        cols = {
            schema.POST_ID: ids, schema.IMAGE_URI: [f"gs://archive/img/{i}.jpg" for i in ids],
            schema.RESOLVED_URI: [f"gs://archive/img/{i}.jpg" for i in ids],
            schema.CONTENT_HASH: [f"{start + i:064x}" for i in range(m)],
            schema.LABEL: [labels[j] for j in scores.argmax(1)], schema.CONFIDENCE: scores.max(1),
            schema.BRAND_SCORE: scores[:, [label != "neither" for label in labels]].max(1),
            schema.BRAND_FOUND: [labels[j] != "neither" for j in scores.argmax(1)],
            schema.MODEL_VERSION: ["old-model"] * m, schema.BACKBONE: ["efficientnet_lite2@bench"] * m,
            schema.SCORED_AT: [scored_at] * m,
        }
        for j, label in enumerate(labels):
            cols[schema.score_column(label)] = scores[:, j]
        cols[schema.EMBEDDING] = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim)
        cols["user"] = [f"user{(start + i) % 97}" for i in range(m)]
        cols["caption"] = [f"post {start + i}" for i in range(m)]
        table = pa.Table.from_arrays([pa.array(cols[fl.name], fl.type) if not isinstance(cols[fl.name], pa.Array)
                                      else cols[fl.name] for fl in arrow], schema=arrow)
        part = folder / "scores" / f"dt=2026-11-0{1 + f % 7}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, part / f"part-bench-{f:05d}.parquet", compression="zstd", row_group_size=rows_per_file)
    stamp.write_text(wanted)
    return folder / "scores"


# --------------------------------------------------------------------------- orchestration

def _inner(kind: str, work: Path, extra: list[str], tag: str):
    out = work / f"{tag}.json"
    measured = run_measured([_python(), "-m", "bench.performance", "--inner", kind, "--inner-out", str(out), *extra],
                            work / f"{tag}.log", env=_env(), cwd=REPO)
    if measured.returncode != 0:
        raise RuntimeError(f"{kind} failed ({measured.returncode}); see {work / f'{tag}.log'}:\n{measured.log[-3000:]}")
    return json.loads(out.read_text()), measured


def _job(work: Path, tag: str, args: list[str]):
    measured = run_measured(_cli(*args), work / f"{tag}.log", env=_env(), cwd=REPO)
    if measured.returncode != 0:
        raise RuntimeError(f"{tag} failed ({measured.returncode}); see {work / f'{tag}.log'}:\n{measured.log[-3000:]}")
    log.info("%s: %.1f s wall, %.1f CPU s, peak RSS %.0f MiB", tag, measured.wall_s, measured.extra["cpu_s"],
             measured.peak_rss_bytes / 2**20)
    _CPU[tag] = measured.extra["cpu_s"]
    return measured


_CPU: dict[str, float] = {}


def _summary(path: Path) -> dict:
    return json.loads(path.read_text())


def _scoring_summary(output: Path) -> dict:
    return _summary(next((output / "runs").glob("*/summary.json")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="posts (distinct images) for the throughput figures")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--artifacts", default=None, help="artifact root (default: brandlens' own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="the jobs' --batch-size")
    parser.add_argument("--direct-num-workers", type=int, default=1)
    parser.add_argument("--direct-running-mode", default="in_memory")
    parser.add_argument("--limit-images", type=int, default=192, help="images per tight-loop configuration")
    parser.add_argument("--limit-batch-sizes", default="8,16,32")
    parser.add_argument("--limit-threads", default="0,1,2", help="decode/preprocess threads (0: serial)")
    parser.add_argument("--naive-images", type=int, default=96)
    parser.add_argument("--rescore-n", type=int, default=200_000)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended to the results (analysis)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: limit,naive,bottleneck,scoring,x4,rescore")
    parser.add_argument("--render-only", type=Path, default=None, metavar="FIGURES_JSON",
                        help="re-render the results file from a finished run's figures.json (e.g. with --notes)")
    parser.add_argument("--inner", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inner-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--artifact", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--images", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--forward-seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(v) for v in str(args.limit_batch_sizes).split(",") if v]
    args.threads = [int(v) for v in str(args.limit_threads).split(",") if v]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.inner:
        result = {"limit": inner_limit, "naive": inner_naive, "artifact": inner_artifact}[args.inner](args)
        Path(args.inner_out).write_text(json.dumps(result, indent=2))
        return 0

    if args.render_only:
        saved = json.loads(args.render_only.read_text())
        report = render_report(saved["figures"], saved["meta"], args.notes.read_text() if args.notes else "")
        args.results.write_text(report)
        print(report)
        return 0

    skip = {s for s in args.skip.split(",") if s}
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs" / dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    runs.mkdir(parents=True)
    load_before = load_average()
    started = time.monotonic()
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "load_before": load_before, "n": args.n, "image_size": 640, "backbone": args.backbone,
            "batch_size": args.batch_size, "rescore_n": args.rescore_n,
            "command": " ".join([".venv/bin/python -m bench.performance", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
            "runner_flags": f"--direct-num-workers={args.direct_num_workers} --direct-running-mode={args.direct_running_mode}",
            "limit_configs": f"batch {args.limit_batch_sizes} x threads {args.limit_threads}"}
    fig: dict = {}

    art_extra = ["--backbone", args.backbone] + (["--artifacts", args.artifacts] if args.artifacts else [])
    artifact, _ = _inner("artifact", runs, art_extra, "artifact")
    meta["input_size"] = artifact["input_size"]
    log.info("backbone %s at %s", artifact["version"], artifact["path"])

    t = time.monotonic()
    posts: Posts = generate_posts(work, args.n, args.seed)
    meta["mean_kb"] = posts.mean_bytes / 1024
    log.info("%d posts in %s (%.0f KB mean) in %.0f s", args.n, posts.labelled.parent, meta["mean_kb"], time.monotonic() - t)
    image_list = runs / "images.txt"
    image_list.write_text("\n".join(str(p) for p in posts.images) + "\n")
    inner = ["--artifact", artifact["path"], "--images", str(image_list)]

    if "limit" not in skip:
        limit, m = _inner("limit", runs, inner + ["--count", str(min(args.limit_images, args.n)), "--limit-batch-sizes",
                                                   args.limit_batch_sizes, "--limit-threads", args.limit_threads], "limit")
        best = limit["best"]
        fig.update(limit_ips=best["images_per_s"], limit_peak_rss=m.peak_rss_bytes,
                   limit_detail=f"best: batch {best['batch_size']}, {best['threads']} decode threads", limit=limit)
    if "naive" not in skip:
        naive, m = _inner("naive", runs, inner + ["--count", str(min(args.naive_images, args.n))], "naive")
        fig.update(naive_ips=naive["images_per_s"], naive_peak_rss=m.peak_rss_bytes)

    runner = ["--direct-num-workers", str(args.direct_num_workers), "--direct-running-mode", args.direct_running_mode,
              "--progress-interval", "2"]
    backbone_args = ["--backbone", args.backbone] + (["--artifacts", args.artifacts] if args.artifacts else [])
    model = runs / "model"
    if "bottleneck" not in skip:
        cache = runs / "cache"
        common = ["bottlenecks", "--input", str(posts.labelled), "--cache", str(cache), "--batch-size", str(args.batch_size),
                  *backbone_args, *runner]
        cold = _job(runs, "bottleneck-cold", [*common, "--output", str(runs / "bn-cold")])
        s = _summary(runs / "bn-cold" / "summary.json")
        steady = last_progress(cold.log, "images embedded by the CNN")
        cnn = s["counts"]["cnn_embeddings"]
        fig.update(bottleneck_steady_ips=steady and steady["rate"], bottleneck_cold_embed_s=s["seconds"]["embedding_pipeline"],
                   bottleneck_cold_tft_s=s["seconds"]["transform_pipeline"], bottleneck_cold_wall_s=cold.wall_s,
                   bottleneck_pipeline_ips=cnn / s["seconds"]["embedding_pipeline"], bottleneck_wall_ips=args.n / cold.wall_s,
                   bottleneck_cold_peak_rss=cold.peak_rss_bytes, bottleneck_cold_total_s=s["seconds"]["total"])
        cached = _job(runs, "bottleneck-cached", [*common, "--output", str(runs / "bn-cached")])
        s2 = _summary(runs / "bn-cached" / "summary.json")
        fig.update(bottleneck_cached_wall_s=cached.wall_s, bottleneck_cached_embed_s=s2["seconds"]["embedding_pipeline"],
                   bottleneck_cached_tft_s=s2["seconds"]["transform_pipeline"], bottleneck_cached_total_s=s2["seconds"]["total"],
                   bottleneck_cached_cnn=s2["counts"]["cnn_embeddings"], bottleneck_cached_hits=s2["counts"]["cache_hits"],
                   bottleneck_cached_peak_rss=cached.peak_rss_bytes)
        trained = _job(runs, "train", ["train", "--bottlenecks", str(runs / "bn-cold"), "--output", str(model),
                                       "--steps", str(args.train_steps), "--eval-every", "50", "--verify-images", "2",
                                       *(["--artifacts", args.artifacts] if args.artifacts else [])])
        fig["train_wall_s"] = trained.wall_s
    if "scoring" not in skip and model.is_dir():
        score = ["score", "--model", str(model), "--scored-at", SCORED_AT, "--batch-size", str(args.batch_size), *runner]
        one = _job(runs, "score-n", [*score, "--input", str(posts.posts), "--output", str(runs / "score-n")])
        s = _scoring_summary(runs / "score-n")
        steady = last_progress(one.log, "posts scored")
        fig.update(scoring_steady_ips=steady and steady["rate"], scoring_n_seconds=s["seconds"],
                   scoring_pipeline_ips=s["counts"]["scored"] / s["seconds"], scoring_n_wall_s=one.wall_s,
                   scoring_wall_ips=args.n / one.wall_s, scoring_n_peak_rss=one.peak_rss_bytes)
        if "x4" not in skip:
            four = _job(runs, "score-4n", [*score, "--input", str(posts.posts_x4), "--output", str(runs / "score-4n")])
            s4 = _scoring_summary(runs / "score-4n")
            steady4 = last_progress(four.log, "posts scored")
            fig.update(scoring_4n_wall_s=four.wall_s, scoring_4n_peak_rss=four.peak_rss_bytes,
                       scoring_4n_seconds=s4["seconds"], scoring_4n_steady_ips=steady4 and steady4["rate"],
                       scoring_4n_scored=s4["counts"]["scored"])
    if "rescore" not in skip and model.is_dir():
        card = json.loads((model / "model_card.json").read_text())
        t = time.monotonic()
        stored = write_stored_embeddings(work / f"stored-{args.rescore_n}", args.rescore_n, artifact["embedding_dim"],
                                         list(card["labels"]), args.seed)
        log.info("stored embeddings at %s (%.0f s)", stored, time.monotonic() - t)
        re_run = _job(runs, "rescore", ["rescore", "--embeddings", str(stored), "--model", str(model), "--output",
                                        str(runs / "rescored"), "--scored-at", SCORED_AT,
                                        "--direct-num-workers", str(args.direct_num_workers),
                                        "--direct-running-mode", args.direct_running_mode])
        s = _scoring_summary(runs / "rescored")
        fig.update(rescore_pps=s["posts_per_second"], rescore_seconds=s["seconds"], rescore_wall_s=re_run.wall_s,
                   rescore_wall_pps=s["counts"]["scored"] / re_run.wall_s, rescore_peak_rss=re_run.peak_rss_bytes,
                   rescore_scored=s["counts"]["scored"])
        # The same job on the first partition only: the difference is the rate without fixed costs.
        part = sorted(p for p in stored.iterdir() if p.is_dir())[0]
        subset = work / f"stored-{args.rescore_n}-first" / "scores" / part.name
        if not subset.is_dir():
            subset.mkdir(parents=True)
            for f in part.glob("*.parquet"):
                try:
                    os.link(f, subset / f.name)
                except OSError:
                    shutil.copy(f, subset / f.name)
        _job(runs, "rescore-part", ["rescore", "--embeddings", str(subset.parent), "--model", str(model), "--output",
                                    str(runs / "rescored-part"), "--scored-at", SCORED_AT,
                                    "--direct-num-workers", str(args.direct_num_workers),
                                    "--direct-running-mode", args.direct_running_mode])
        small = _scoring_summary(runs / "rescored-part")
        extra = s["counts"]["scored"] - small["counts"]["scored"]
        fig.update(rescore_part_n=small["counts"]["scored"], rescore_part_seconds=small["seconds"],
                   rescore_marginal_pps=extra / (s["seconds"] - small["seconds"]) if s["seconds"] > small["seconds"] and extra > 0 else None)

    fig["cpu_seconds"] = dict(_CPU)
    meta["load_after"] = load_average()
    meta["benchmark_seconds"] = time.monotonic() - started
    notes = args.notes.read_text() if args.notes else ""
    report = render_report(fig, meta, notes)
    args.results.write_text(report)
    (runs / "figures.json").write_text(json.dumps({"figures": fig, "meta": meta}, indent=2, default=str))
    print(report)
    log.info("wrote %s and %s in %.0f s", args.results, runs / "figures.json", meta["benchmark_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
