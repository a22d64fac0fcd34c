"""The performance benchmark's own pieces (bench/perf_helpers.py), on small inputs and fake numbers.

The benchmark itself (bench/performance.py) is not part of the suite.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import perf_helpers as ph


def test_posts_are_deterministic_instagram_size_jpegs(tmp_path):
    from PIL import Image

    a = ph.render_post(7, "acme")
    assert a == ph.render_post(7, "acme") and a != ph.render_post(8, "acme")
    with Image.open(io.BytesIO(a)) as img:
        assert img.format == "JPEG" and img.size == (640, 640)
    assert 50_000 < len(a) < 200_000  # textured and noisy: a realistic size, not a flat colour

    posts = ph.generate_posts(tmp_path, 4, seed=1, size=96, multiple=4)
    assert len(posts.images) == 4 and all(p.is_file() for p in posts.images)
    with open(posts.posts) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["post_id", "image_uri", "posted_at", "user", "caption"] and len(rows) == 4
    with open(posts.posts_x4) as f:
        many = list(csv.DictReader(f))
    assert len(many) == 16 and len({r["post_id"] for r in many}) == 16
    with open(posts.labelled) as f:
        labelled = list(csv.DictReader(f))
    assert {r["label"] for r in labelled} <= set(ph.LABELS) and {r["split"] for r in labelled} <= {"train", "validation", "test"}
    before = posts.images[0].stat().st_mtime_ns
    ph.generate_posts(tmp_path, 4, seed=1, size=96)  # images are reused
    assert posts.images[0].stat().st_mtime_ns == before


def test_proc_parsing_and_process_tree_rss(tmp_path):
    assert ph.parse_stat_ppid("123 (python (x) y) S 45 123 123 0") == 45
    assert ph.parse_rss_kb("Name:\tx\nVmRSS:\t  2048 kB\n") == 2048 and ph.parse_rss_kb("Name: zombie\n") == 0
    assert ph.tree_rss_bytes(os.getpid()) > 10 * 2**20
    child = "import numpy as np, time; a = np.ones(80 * 2**20 // 8); time.sleep(0.6)"
    measured = ph.run_measured([sys.executable, "-c", child], tmp_path / "child.log", interval=0.05)
    assert measured.returncode == 0 and measured.wall_s > 0.5
    assert measured.peak_rss_bytes > 80 * 2**20


def test_steady_rate_from_progress_lines():
    log = "\n".join([
        "2026-11-29 02:57:38,772 INFO beam_jobs.progress: images embedded by the CNN: 32 (10.0/s over 3 s, this worker)",
        "2026-11-29 02:57:39,000 INFO beam_jobs.progress: posts scored: 5 (1.0/s over 5 s, this worker)",
        "2026-11-29 02:57:42,772 INFO beam_jobs.progress: images embedded by the CNN: 96 (24.5/s over 4 s, this worker)",
    ])
    steady = ph.last_progress(log, "images embedded by the CNN")
    assert steady["count"] == 96 and steady["rate"] == pytest.approx(16.0) and steady["lines"] == 2
    assert ph.last_progress(log, "posts scored")["rate"] == 1.0  # one line: its own rate
    assert ph.last_progress(log, "rows written") is None


def test_archive_mix_is_interleaved_and_has_every_kind(tmp_path):
    from PIL import Image

    plan = ph.mix_plan(40)
    assert plan[:3] == ["phone", "web", "thumbnail"] and plan.count("phone") == 16 and {"png", "webp"} <= set(plan)
    archive = ph.generate_archive(tmp_path, 10, scale=0.05)
    assert len(archive.images) == 10 and set(archive.kinds) == set(plan[:10])
    phone = next(p for p, k in zip(archive.images, archive.kinds) if k == "phone")
    with Image.open(phone) as img:
        assert img.format == "JPEG" and img.getexif().get(0x0112) in ph.PHONE_ORIENTATIONS
    other = [p for p, k in zip(archive.images, archive.kinds) if k == "phone"][1]
    assert phone.read_bytes() != other.read_bytes()  # distinct bytes, so no job dedups them
    with open(archive.posts_small) as f:
        assert len(list(csv.DictReader(f))) == 1
    assert "phone (JPEG" in archive.describe()
    assert ph.with_jpeg_comment(b"\xff\xd8rest", "x") == b"\xff\xd8\xff\xfe\x00\x03xrest"


def _figures():
    return {"limit_ips": 30.0, "bottleneck_steady_ips": 28.5, "scoring_steady_ips": 26.0, "peer_wall_s": 90.0,
            "scoring_wall_s": 30.0, "phone_draft_ips": 8.0, "phone_full_ips": 2.0, "bottleneck_cold_wall_s": 100.0,
            "bottleneck_cached_wall_s": 12.5, "rescore_pps": 40_000.0, "bottleneck_n_peak_rss": 1000 * 2**20,
            "bottleneck_10n_peak_rss": 1050 * 2**20, "scoring_n_peak_rss": 1000 * 2**20, "scoring_10n_peak_rss": 1200 * 2**20}


def test_ratios_goals_and_results_json_on_fake_numbers():
    r = ph.ratios(_figures())
    assert r["bottlenecks_vs_limit_steady"] == pytest.approx(0.95) and r["scoring_vs_runinference_example"] == 3.0
    assert r["phone_photo_speedup_vs_full_decode"] == 4.0 and r["cached_rerun_speedup_wall"] == 8.0
    assert r["memory_growth_10n_vs_n"] == pytest.approx(0.2)  # the worse of the two jobs
    met = {c["name"]: c["met"] for c in ph.goal_checks(_figures())}
    assert met["bottlenecks_vs_limit_steady"] and not met["scoring_vs_limit_steady"]
    assert not met["cached_rerun_speedup_wall"] and not met["rescore_posts_per_s"] and not met["memory_growth_10n_vs_n"]
    assert ph.goal_checks({})[0]["met"] is None and ph.ratio(None, 2) is None and ph.ratio(3, 0) is None
    out = ph.results_json(_figures(), {"machine": {"cores": 2}, "load": {"before": 1.0}, "commit": "abc", "date": "d"})
    assert set(out["ratios"]) == set(ph.GOALS) and out["absolute"]["limit_ips"] == 30.0
    assert out["load_average"] == {"before": 1.0} and out["commit"] == "abc"


def test_cost_per_million_posts():
    # 10 images/s per vCPU: 27.8 vCPU-hours
    assert ph.cost_per_million(10.0, vcpu_hour=0.05, gb_hour=0.0) == pytest.approx(1e6 / 10 / 3600 * 0.05)
    assert ph.cost_per_million(20.0) == pytest.approx(ph.cost_per_million(10.0) / 2)


def test_report_renders_figures_ratios_and_machine():
    meta = {"date": "2026-12-02 02:20 UTC", "machine": {"cores": 2, "cpu": "Test CPU", "memory_mb": 24000},
            "load": {"before": 0.5, "after": 1.1, "mean": 0.8, "max": 2.0, "interval_s": 10}, "n": 400, "n_small": 40,
            "backbone": "efficientnet_lite2", "input_size": 260, "batch_size": 32, "engine": "tflite", "mix": "160 phone",
            "command": ".venv/bin/python -m bench.performance", "runner_flags": "--direct-num-workers=1", "rescore_n": 10**6}
    text = ph.render_report(_figures(), meta, "## Notes\n\nwhere the time goes")
    assert "Test CPU, 2 cores" in text and "load average 0.50 before" in text and "max 2.00" in text
    assert "| scoring_vs_limit_steady | 0.87 | >= 0.9 | **no** |" in text
    assert "| memory_growth_10n_vs_n | +20.0% | <= 10% | **no** |" in text
    assert "per vCPU" in text and "where the time goes" in text and "160 phone" in text


def test_traced_preprocessing_matches_the_eager_ops():
    """beam_jobs.common.images.prepare_image (the jobs' hot path) gives brandlens.preprocess.prepare's pixels."""
    pytest.importorskip("tensorflow")
    from beam_jobs.common.images import prepare_image
    from brandlens.preprocess import RESIZE_MODES, prepare

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((97, 131, 3), (64, 48, 3))]
    images.append(rng.random((50, 70, 3)).astype(np.float32) * 255)
    for mode in RESIZE_MODES:
        for crop in (0.875, 1.0):
            for image in images:
                np.testing.assert_array_equal(prepare_image(image, 32, crop, mode), prepare(image, 32, crop, mode))


def test_benchmark_command_line_parses():
    out = subprocess.run([sys.executable, "-m", "bench.performance", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ph.Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and "--n" in out.stdout and "--rescore-n" in out.stdout and "peer" in out.stdout
