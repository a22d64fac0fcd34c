"""Before/after benchmark of moving both jobs onto RunInference, in one run on the same files.

Generates N Instagram-size posts (640x640 JPEGs, ``bench.perf_helpers``), extracts the code of
``--before`` (a git revision) with ``git archive``, and runs the bottleneck job (no cache, so every
image goes through the CNN) and the scoring job with each version's own CLI, alternating the order
round by round (before, after, after, before, ...). Reports the embedding pipeline's seconds and
images/s, the scoring job's seconds and posts/s, peak RSS, and whether the outputs agree
(embeddings by content hash, scores by post id).

    .venv/bin/python -m bench.runinference --n 300 --before main

Writes ``bench/results/runinference.json`` and ``bench/results/runinference.md``; work files live
in ``--work-dir`` (default /tmp/brandlens-runinference).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.perf_helpers import generate_posts, machine, run_measured

log = logging.getLogger("bench.runinference")
REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results")
SCORED_AT = "2026-11-29T12:00:00Z"


def _env(source: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("NO_GCE_CHECK", "true")
    env["PYTHONPATH"] = str(source)
    return env


def _run(source: Path, log_path: Path, *args: str):
    measured = run_measured([sys.executable, "-m", "brandlens.cli", *args], log_path, env=_env(source), cwd=source)
    if measured.returncode:
        raise RuntimeError(f"{' '.join(args[:1])} failed ({measured.returncode}); see {log_path}:\n{measured.log[-3000:]}")
    return measured


def _extract(revision: str, into: Path) -> str:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", revision], capture_output=True, text=True, check=True).stdout.strip()
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def _embeddings(folder: Path) -> dict:
    import tensorflow as tf

    from schemas.bottleneck import from_example_bytes

    out = {}
    for path in sorted(folder.glob("examples/*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
            r = from_example_bytes(record.numpy())
            out[(r.content_hash, r.variant)] = np.asarray(r.embedding, np.float32)
    return out


def _scores(folder: Path) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(str(folder / "scores")).to_pylist()
    return {r["post_id"]: (r["label"], np.array([v for k, v in sorted(r.items()) if k.startswith("score_")])) for r in table}


def _agreement(a: dict, b: dict) -> dict:
    keys = sorted(set(a) & set(b))
    if not keys:
        return {"common": 0, "only_before": len(a), "only_after": len(b)}
    if isinstance(a[keys[0]], tuple):
        labels = sum(a[k][0] == b[k][0] for k in keys)
        diff = max(float(np.abs(a[k][1] - b[k][1]).max()) for k in keys)
        return {"common": len(keys), "only_before": len(set(a) - set(b)), "only_after": len(set(b) - set(a)),
                "same_label": int(labels), "max_abs_score_diff": diff}
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in keys)
    return {"common": len(keys), "only_before": len(set(a) - set(b)), "only_after": len(set(b) - set(a)), "max_abs_diff": diff}


def render(result: dict) -> str:
    rows = ["| round | version | bottleneck: embedding pipeline s | CNN images/s | CPU s | peak RSS MiB "
            "| scoring s | posts/s | CPU s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        rows.append(f"| {r['round']} | {r['version']} | {r['bottleneck_s']:.1f} | {r['cnn_images_per_s']:.1f} | "
                    f"{r['bottleneck_cpu_s']:.0f} | {r['bottleneck_rss_mib']:.0f} | {r['scoring_s']:.1f} | {r['posts_per_s']:.1f} | "
                    f"{r['scoring_cpu_s']:.0f} | {r['scoring_rss_mib']:.0f} |")
    mean = result["mean"]
    lines = [f"# RunInference: before ({result['before'][:12]}) and after, in one run", "",
             f"{result['n']} generated 640x640 JPEG posts, backbone {result['backbone']}, batch size {result['batch_size']}, "
             f"DirectRunner; {result['machine'].get('cores', '?')} cores (shared machine, load average at start "
             f"{result['load_average']}). Figures are each job's own summary (start-up included).", "", *rows, "",
             f"Mean after/before: embedding pipeline images/s x{mean['cnn_ratio']:.2f}, scoring posts/s x{mean['scoring_ratio']:.2f}; "
             f"CPU seconds (whole process: imports, both pipelines) bottleneck job x{mean['bottleneck_cpu_ratio']:.2f}, "
             f"scoring job x{mean['scoring_cpu_ratio']:.2f} (lower is better).", "",
             f"Outputs: embeddings {json.dumps(result['agreement']['embeddings'])}; scores {json.dumps(result['agreement']['scores'])}.",
             "", "Command: `" + result["command"] + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--before", default="main", help="git revision of the 'before' code (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="before/after pairs, order alternating (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("BRANDLENS_RI_DIR", "/tmp/brandlens-runinference")))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    work = args.work_dir.resolve()
    runs = work / "runs" / dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    runs.mkdir(parents=True)
    posts = generate_posts(work, args.n, size=640)
    sources = {"after": REPO}
    before = _extract(args.before, runs / "before-src")
    sources["before"] = runs / "before-src"
    load = os.getloadavg()

    model = runs / "model"
    results, outputs = [], {}
    for round_ in range(args.rounds):
        order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        for version in order:
            tag = f"{version}-{round_}"
            bn = runs / f"bn-{tag}"
            bottleneck = _run(sources[version], runs / f"{tag}-bottlenecks.log", "bottlenecks", "--input", str(posts.labelled),
                              "--output", str(bn), "--no-cache", "--backbone", args.backbone, "--batch-size", str(args.batch_size))
            summary = json.loads((bn / "summary.json").read_text())
            if not model.exists():
                _run(REPO, runs / "train.log", "train", "--bottlenecks", str(bn), "--output", str(model), "--steps",
                     str(args.train_steps), "--verify-images", "0")
            scored = runs / f"scored-{tag}"
            scoring = _run(sources[version], runs / f"{tag}-score.log", "score", "--input", str(posts.posts), "--model", str(model),
                           "--output", str(scored), "--scored-at", SCORED_AT, "--batch-size", str(args.batch_size))
            score_summary = json.loads(next((scored / "runs").glob("*/summary.json")).read_text())
            seconds = summary["seconds"]["embedding_pipeline"]
            results.append({
                "round": round_, "version": version, "bottleneck_s": seconds,
                "cnn_images_per_s": summary["counts"]["cnn_embeddings"] / seconds,
                "bottleneck_rss_mib": bottleneck.peak_rss_bytes / 2 ** 20, "bottleneck_wall_s": bottleneck.wall_s,
                "bottleneck_cpu_s": bottleneck.extra["cpu_s"], "scoring_cpu_s": scoring.extra["cpu_s"],
                "scoring_s": score_summary["seconds"], "posts_per_s": score_summary["posts_per_second"],
                "scoring_rss_mib": scoring.peak_rss_bytes / 2 ** 20, "scoring_wall_s": scoring.wall_s,
                "inference": {"bottlenecks": summary.get("inference"), "scoring": score_summary.get("inference")},
            })
            outputs.setdefault(version, (bn, scored))
            log.info("%s: %s", tag, json.dumps({k: v for k, v in results[-1].items() if k != "inference"}))

    def mean(version, key):
        return float(np.mean([r[key] for r in results if r["version"] == version]))

    result = {
        "n": args.n, "before": before, "backbone": args.backbone, "batch_size": args.batch_size, "machine": machine(),
        "load_average": [round(v, 2) for v in load], "runs": results,
        "mean": {"cnn_ratio": mean("after", "cnn_images_per_s") / mean("before", "cnn_images_per_s"),
                 "scoring_ratio": mean("after", "posts_per_s") / mean("before", "posts_per_s"),
                 "bottleneck_cpu_ratio": mean("after", "bottleneck_cpu_s") / mean("before", "bottleneck_cpu_s"),
                 "scoring_cpu_ratio": mean("after", "scoring_cpu_s") / mean("before", "scoring_cpu_s")},
        "agreement": {"embeddings": _agreement(_embeddings(outputs["before"][0]), _embeddings(outputs["after"][0])),
                      "scores": _agreement(_scores(outputs["before"][1]), _scores(outputs["after"][1]))},
        "command": "python -m bench.runinference " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "runinference.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.results / "runinference.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
