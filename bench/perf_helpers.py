"""Pure pieces of the performance benchmark (bench/performance.py), tested without TensorFlow or Beam.

Synthetic Instagram-size posts, process-tree memory from /proc, progress-line parsing,
the goals and the results file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABELS = ("acme", "zenith", "neither")
SPLIT_CYCLE = ("train", "train", "train", "validation", "test", "train", "train", "validation", "test", "train")
GOALS = {  # issue 13: ratios within one run of bench.performance
    "scoring_vs_limit_steady": (0.9, "min"),
    "bottlenecks_vs_limit_steady": (0.9, "min"),
    "scoring_vs_runinference_example": (2.0, "min"),
    "phone_photo_speedup_vs_full_decode": (3.0, "min"),
    "cached_rerun_speedup_wall": (10.0, "min"),
    "rescore_posts_per_s": (50_000, "min"),
    "memory_growth_10n_vs_n": (0.10, "max"),
}
# Dataflow batch list prices (us-central1) used for the cost line; change with --price-*.
DEFAULT_VCPU_HOUR_USD = 0.056
DEFAULT_GB_HOUR_USD = 0.003557
DEFAULT_GB_PER_VCPU = 3.75  # n1-standard


# --------------------------------------------------------------------------- posts

def render_post(seed: int, label: str, size: int = 640, quality: int = 85) -> bytes:
    """One textured, noisy JPEG of ``size`` x ``size`` (~100-150 KB at 640 px), deterministic by seed.

    Smooth colour fields (a low-resolution random image upscaled), sensor-like noise and a few
    shapes; brand posts carry their mark (a coloured disc or bar), so a head can learn something.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(size // 16, size // 5))
        draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    if label == LABELS[0]:
        x, y = (int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
        draw.ellipse([x - size // 8, y - size // 8, x + size // 8, y + size // 8], fill=(220, 30, 30))
    elif label == LABELS[1]:
        x, y = (int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
        draw.rectangle([x - size // 6, y - size // 20, x + size // 6, y + size // 20], fill=(20, 60, 200))
    pixels = np.asarray(img, np.int16) + rng.normal(0, 10, (size, size, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class Posts:
    root: Path
    images: list[Path]
    labelled: Path   # uri,label,split (bottleneck job)
    posts: Path      # post_id,image_uri,posted_at,user,caption: N posts (scoring job)
    posts_x4: Path   # 4N posts over the same images (memory check)
    mean_bytes: float


def _post_rows(images: list[Path], count: int, start: dt.date) -> list[dict]:
    rows = []
    for i in range(count):
        rows.append({"post_id": f"p{i:08d}", "image_uri": str(images[i % len(images)]),
                     "posted_at": (start + dt.timedelta(days=i % 7)).isoformat() + "T12:00:00Z",
                     "user": f"user{i % 97}", "caption": f"post {i} #shoes"})
    return rows


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def generate_posts(root: str | Path, n: int, seed: int = 0, size: int = 640, multiple: int = 4) -> Posts:
    """``n`` distinct images (reused when already there), their labelled manifest, and N / ``multiple`` x N posts."""
    root = Path(root)
    folder = root / f"images-{size}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    images, labelled, sizes = [], [], []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        path = folder / f"{i:07d}.jpg"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(render_post(seed * 1_000_003 + i, label, size))
            os.replace(tmp, path)
        images.append(path)
        sizes.append(path.stat().st_size)
        labelled.append({"uri": str(path), "label": label, "split": SPLIT_CYCLE[(i // len(LABELS)) % len(SPLIT_CYCLE)]})
    start = dt.date(2026, 1, 5)
    fields = ["post_id", "image_uri", "posted_at", "user", "caption"]
    manifests = root / f"manifests-n{n}-s{seed}"
    manifests.mkdir(exist_ok=True)
    _write_csv(manifests / "labelled.csv", labelled, ["uri", "label", "split"])
    _write_csv(manifests / "posts.csv", _post_rows(images, n, start), fields)
    _write_csv(manifests / f"posts-x{multiple}.csv", _post_rows(images, n * multiple, start), fields)
    return Posts(root, images, manifests / "labelled.csv", manifests / "posts.csv", manifests / f"posts-x{multiple}.csv",
                 float(np.mean(sizes)) if sizes else 0.0)


# --------------------------------------------------------------------------- the realistic archive mix

# (kind, share of the distinct images, sizes (w, h) as stored, format). Phone photos are stored
# landscape with an EXIF orientation, as cameras write them; the others carry none.
MIX = (
    ("phone", 0.40, ((4000, 3000), (4608, 3456), (6000, 4000)), "JPEG"),
    ("web", 0.30, ((1080, 1350), (1600, 1067), (2048, 1365)), "JPEG"),
    ("thumbnail", 0.15, ((150, 150), (320, 240), (240, 320)), "JPEG"),
    ("png", 0.075, ((800, 800), (1242, 2208)), "PNG"),
    ("webp", 0.075, ((1200, 900), (1080, 1080)), "WEBP"),
)
PHONE_ORIENTATIONS = (6, 1, 6, 8, 3, 1)  # mostly portrait shots (6: rotate 90 clockwise to show)
PHONE_BASES = 12  # distinct phone renders; more phone files are these with a unique JPEG comment (new bytes)


def mix_plan(n: int) -> list[str]:
    """The kind of each of ``n`` images, interleaved so that every prefix is close to the mix."""
    plan, made = [], {kind: 0 for kind, *_ in MIX}
    for i in range(n):
        kind = max(MIX, key=lambda m: m[1] * (i + 1) - made[m[0]])[0]  # the kind furthest behind its share
        made[kind] += 1
        plan.append(kind)
    return plan


def render_photo(seed: int, label: str, width: int, height: int, fmt: str = "JPEG", quality: int = 88,
                 orientation: int = 1, noise: float = 7.0) -> bytes:
    """A textured, noisy ``width`` x ``height`` image with its brand mark, deterministic by seed.

    At 12-24 MP and quality 88 the noise puts JPEGs at 2.5-5.5 MB, as phone cameras write them.
    """
    from PIL import Image, ImageChops, ImageDraw

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (max(2, height // 48), max(2, width // 48), 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(int(rng.integers(2, 6))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(side // 16, side // 5))
        draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    x, y = int(rng.integers(width // 5, 4 * width // 5)), int(rng.integers(height // 5, 4 * height // 5))
    if label == LABELS[0]:
        draw.ellipse([x - side // 8, y - side // 8, x + side // 8, y + side // 8], fill=(220, 30, 30))
    elif label == LABELS[1]:
        draw.rectangle([x - side // 6, y - side // 20, x + side // 6, y + side // 20], fill=(20, 60, 200))
    tile = np.clip(rng.normal(128, noise, (min(height, 512), min(width, 512), 3)), 0, 255).astype(np.uint8)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    grain = Image.fromarray(np.ascontiguousarray(np.tile(tile, reps)[:height, :width]))
    out = ImageChops.add(img, grain, 1.0, -128) if noise else img  # pixels + grain - 128, clipped, in C
    buf = io.BytesIO()
    params = {"quality": quality} if fmt in ("JPEG", "WEBP") else {"compress_level": 1}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif
    out.save(buf, fmt, **params)
    return buf.getvalue()


def with_jpeg_comment(data: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes (content hash), same pixels."""
    body = text.encode()
    return data[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


@dataclass(frozen=True)
class Archive:
    root: Path
    images: list[Path]
    kinds: list[str]
    labelled: Path        # all n images (bottleneck job)
    labelled_small: Path  # the first n // 10 (memory at N vs 10N)
    posts: Path           # n posts, one per image (scoring job)
    posts_small: Path     # n // 10 posts
    bytes_by_kind: dict   # kind -> [count, total bytes, megapixels]

    def describe(self) -> str:
        parts = []
        for kind, share, sizes, fmt in MIX:
            count, total, mp = self.bytes_by_kind.get(kind, (0, 0, 0.0))
            if count:
                dims = ", ".join(f"{w}x{h}" for w, h in sizes)
                parts.append(f"{count} {kind} ({fmt}, {dims}; mean {total / count / 2**20:.2f} MB, {mp / count:.1f} MP)")
        return "; ".join(parts)


def generate_archive(root: str | Path, n: int, seed: int = 0, scale: float = 1.0) -> Archive:
    """``n`` distinct images in the realistic mix (reused when already there) and their manifests.

    ``scale`` shrinks every size (tests); the benchmark uses 1.
    """
    root = Path(root)
    folder = root / (f"archive-s{seed}" if scale == 1.0 else f"archive-s{seed}-x{scale:g}")
    sized = lambda wh: (max(8, int(wh[0] * scale)), max(8, int(wh[1] * scale)))  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    plan = mix_plan(n)
    sizes_of = {kind: (sizes, fmt) for kind, _, sizes, fmt in MIX}
    images, labelled, stats, bases = [], [], {}, {}
    for i, kind in enumerate(plan):
        label = LABELS[i % len(LABELS)]
        sizes, fmt = sizes_of[kind]
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
        path = folder / f"{i:07d}-{kind}.{ext}"
        rng = np.random.default_rng(seed * 1_000_003 + i)
        width, height = sized(sizes[int(rng.integers(0, len(sizes)))])
        if not path.is_file():
            if kind == "phone":
                base = i % PHONE_BASES
                if base not in bases:
                    w, h = sized(MIX[0][2][base % len(MIX[0][2])])
                    bases[base] = render_photo(seed * 7919 + base, LABELS[base % len(LABELS)], w, h,
                                               orientation=PHONE_ORIENTATIONS[base % len(PHONE_ORIENTATIONS)])
                data = with_jpeg_comment(bases[base], f"brandlens bench {seed} {i}")
            else:
                data = render_photo(seed * 1_000_003 + i, label, width, height, fmt, quality=85 if kind != "thumbnail" else 80,
                                    noise=0.0 if fmt == "PNG" else 4.0)  # PNGs: flat like screenshots and graphics
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        if kind == "phone":
            base = i % PHONE_BASES
            label = LABELS[base % len(LABELS)]
            width, height = sized(MIX[0][2][base % len(MIX[0][2])])
        images.append(path)
        count, total, mp = stats.get(kind, (0, 0, 0.0))
        stats[kind] = (count + 1, total + path.stat().st_size, mp + width * height / 1e6)
        labelled.append({"uri": str(path), "label": label, "split": SPLIT_CYCLE[(i // len(LABELS)) % len(SPLIT_CYCLE)]})
    manifests = root / f"{folder.name}-manifests-n{n}"
    manifests.mkdir(exist_ok=True)
    small = max(1, n // 10)
    fields = ["post_id", "image_uri", "posted_at", "user", "caption"]
    start = dt.date(2026, 1, 5)
    _write_csv(manifests / "labelled.csv", labelled, ["uri", "label", "split"])
    _write_csv(manifests / "labelled-small.csv", labelled[:small], ["uri", "label", "split"])
    _write_csv(manifests / "posts.csv", _post_rows(images, n, start), fields)
    _write_csv(manifests / "posts-small.csv", _post_rows(images, small, start), fields)
    return Archive(root, images, plan, manifests / "labelled.csv", manifests / "labelled-small.csv",
                   manifests / "posts.csv", manifests / "posts-small.csv", stats)


# --------------------------------------------------------------------------- processes and memory

def _children(proc: Path = Path("/proc")) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = parse_stat_ppid(stat)
        if ppid is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def parse_stat_ppid(stat: str) -> int | None:
    """The parent pid from a /proc/<pid>/stat line (the command may hold spaces and parentheses)."""
    try:
        return int(stat[stat.rindex(")") + 2:].split()[1])
    except (ValueError, IndexError):
        return None


def parse_rss_kb(status: str) -> int:
    """VmRSS in kB from a /proc/<pid>/status text (0 when absent, e.g. a zombie)."""
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.M)
    return int(match.group(1)) if match else 0


def tree_rss_bytes(pid: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of ``pid`` and all its descendants, summed."""
    children = _children(proc)
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total += parse_rss_kb((proc / str(p) / "status").read_text()) * 1024
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


@dataclass
class Measured:
    command: list[str]
    wall_s: float
    peak_rss_bytes: int
    returncode: int
    log: str
    extra: dict = field(default_factory=dict)


def run_measured(command: list[str], log_path: Path, env: dict | None = None, interval: float = 0.1,
                 cwd: str | Path | None = None) -> Measured:
    """Run ``command``, sampling the RSS of its whole process tree every ``interval`` s; output goes to ``log_path``."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of the child and the descendants it waited for
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    return Measured(command, time.monotonic() - started, peak[0], proc.returncode, Path(log_path).read_text(errors="replace"),
                    {"cpu_s": usage.ru_utime + usage.ru_stime})


_PROGRESS = re.compile(r"(?P<what>[a-zA-Z ]+): (?P<count>\d+) \((?P<rate>[0-9.]+)/s over (?P<secs>\d+) s, this worker\)")
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[,.]\d{3})")


def last_progress(log: str, what: str) -> dict | None:
    """The steady rate of a job from its ``what: N (R/s over T s, this worker)`` progress lines.

    With two or more time-stamped lines: (last count - first count) / (time between them), i.e. the
    rate once the pipeline is running, without start-up or the tail. Otherwise the last line's own
    rate (counted from the first batch on). Returns {'count', 'rate', 'seconds', 'lines'} or None.
    """
    points = []
    for line in log.splitlines():
        match = _PROGRESS.search(line)
        if match and match.group("what").strip() == what:
            stamp = _STAMP.match(line)
            when = dt.datetime.strptime(stamp.group(1).replace(",", "."), "%Y-%m-%d %H:%M:%S.%f") if stamp else None
            points.append((when, int(match.group("count")), float(match.group("rate")), int(match.group("secs"))))
    if not points:
        return None
    (t0, c0, _, _), (t1, c1, rate, secs) = points[0], points[-1]
    if len(points) >= 2 and t0 is not None and t1 is not None and t1 > t0:
        return {"count": c1, "rate": (c1 - c0) / (t1 - t0).total_seconds(), "seconds": (t1 - t0).total_seconds(),
                "lines": len(points)}
    return {"count": c1, "rate": rate, "seconds": float(secs), "lines": len(points)}


# --------------------------------------------------------------------------- machine, goals, cost

def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024
    except (OSError, AttributeError):
        pass
    return {"cores": os.cpu_count(), "cpu": model, "memory_mb": mem}


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def ratios(fig: dict) -> dict:
    """The issue's seven ratios from the figures (None where a part did not run)."""
    growth = [ratio(fig.get(f"{job}_10n_peak_rss"), fig.get(f"{job}_n_peak_rss")) for job in ("bottleneck", "scoring")]
    growth = [g - 1 for g in growth if g is not None]
    return {
        "scoring_vs_limit_steady": ratio(fig.get("scoring_steady_ips"), fig.get("limit_ips")),
        "bottlenecks_vs_limit_steady": ratio(fig.get("bottleneck_steady_ips"), fig.get("limit_ips")),
        "scoring_vs_runinference_example": ratio(fig.get("peer_wall_s"), fig.get("scoring_wall_s")),
        "phone_photo_speedup_vs_full_decode": ratio(fig.get("phone_draft_ips"), fig.get("phone_full_ips")),
        "cached_rerun_speedup_wall": ratio(fig.get("bottleneck_cold_wall_s"), fig.get("bottleneck_cached_wall_s")),
        "rescore_posts_per_s": fig.get("rescore_pps"),
        "memory_growth_10n_vs_n": max(growth) if growth else None,
    }


def goal_checks(fig: dict) -> list[dict]:
    """[{'name', 'value', 'target', 'met'}] for every goal of the issue."""
    checks = []
    for name, value in ratios(fig).items():
        target, kind = GOALS[name]
        met = None if value is None else (value >= target if kind == "min" else value <= target)
        checks.append({"name": name, "value": value, "target": target, "met": met})
    return checks


def results_json(fig: dict, meta: dict) -> dict:
    """bench/results/performance.json in the issue's format."""
    absolute = {k: v for k, v in fig.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    absolute.update({f"cpu_s_{tag}": v for tag, v in (fig.get("cpu_seconds") or {}).items()})
    return {"ratios": ratios(fig), "goals": {k: {"target": t, "kind": kind} for k, (t, kind) in GOALS.items()},
            "absolute": absolute, "machine": meta.get("machine"), "load_average": meta.get("load"),
            "commit": meta.get("commit"), "date": meta.get("date"), "command": meta.get("command"),
            "mix": meta.get("mix"), "n": meta.get("n"), "n_small": meta.get("n_small"), "engine": meta.get("engine")}


def cost_per_million(images_per_s_per_vcpu: float, vcpu_hour: float = DEFAULT_VCPU_HOUR_USD,
                     gb_hour: float = DEFAULT_GB_HOUR_USD, gb_per_vcpu: float = DEFAULT_GB_PER_VCPU) -> float:
    """USD per million posts on Dataflow batch workers at ``images_per_s_per_vcpu``."""
    vcpu_hours = 1e6 / images_per_s_per_vcpu / 3600
    return vcpu_hours * (vcpu_hour + gb_hour * gb_per_vcpu)


# --------------------------------------------------------------------------- report

def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _mib(value) -> str:
    return f"{value / 2**20:,.0f} MiB" if value else ""


def render_report(fig: dict, meta: dict, notes: str = "") -> str:
    """bench/RESULTS-performance.md: the run, the figures, the goals, where the time goes, Dataflow cost."""
    cores = meta["machine"]["cores"] or 1
    load = meta.get("load") or {}
    lines = [
        "# Performance benchmark results", "",
        f"Run {meta['date']} (commit `{meta.get('commit', '?')}`) on {meta['machine']['cpu']}, {cores} cores, "
        f"{meta['machine']['memory_mb']:,} MB RAM, shared with other work: 1-minute load average "
        f"{_fmt(load.get('before'), 2)} before, {_fmt(load.get('after'), 2)} after, mean {_fmt(load.get('mean'), 2)} and "
        f"max {_fmt(load.get('max'), 2)} during the run (sampled every {load.get('interval_s', '?')} s). "
        "Every goal is a ratio of two figures of this one run.", "",
        f"Command: `{meta['command']}` ({_fmt(meta.get('benchmark_seconds'), 0)} s in all).", "",
        f"Archive (generated by `bench.perf_helpers.generate_archive`, not shipped): N = {meta['n']} distinct images: "
        f"{meta.get('mix', '')}. Phone photos are stored landscape with EXIF orientation 6/8/3/1, as cameras write them. "
        f"Memory is compared at N/10 = {meta.get('n_small')} and N. Backbone `{meta['backbone']}` ({meta['input_size']} px) "
        f"on the `{meta.get('engine')}` engine; jobs on the DirectRunner with `{meta['runner_flags']}`, batch size "
        f"{meta['batch_size']}.", "",
        "## Goals", "", "| ratio | value | goal | met |", "|---|---:|---:|---|",
    ]
    for c in goal_checks(fig):
        value = "n/a" if c["value"] is None else (f"{c['value']:+.1%}" if c["name"].startswith("memory") else
                                                  f"{c['value']:,.2f}" if c["value"] < 1000 else f"{c['value']:,.0f}")
        target = f"<= {c['target']:.0%}" if c["name"].startswith("memory") else f">= {c['target']:,g}"
        met = "n/a" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(f"| {c['name']} | {value} | {target} | {met} |")
    lines += ["", "## Figures", "", "| # | measurement | images or posts / s | time | peak RSS |", "|---|---|---:|---|---:|"]
    rows = [
        ("1", f"limit: decode (reduced-scale JPEG) + preprocess + forward, tight loop, archive mix, best of "
              f"{meta.get('limit_configs', '')}", fig.get("limit_ips"), fig.get("limit_detail", ""), fig.get("limit_peak_rss")),
        ("1b", "limit, the same loop on 640x640 JPEGs (the old benchmark's posts)", fig.get("limit640_ips"),
         fig.get("limit640_detail", ""), fig.get("limit640_peak_rss")),
        ("2a", "phone photos (12-24 MP) through decode + preprocess + forward, reduced-scale decode", fig.get("phone_draft_ips"), "", None),
        ("2b", "phone photos, full decode (as before)", fig.get("phone_full_ips"), "", None),
        ("3a", "bottleneck job, steady state (CNN progress rate)", fig.get("bottleneck_steady_ips"), "", None),
        ("3b", "bottleneck job, cold, process wall", ratio(meta["n"], fig.get("bottleneck_cold_wall_s")),
         f"{_fmt(fig.get('bottleneck_cold_wall_s'))} s", fig.get("bottleneck_10n_peak_rss")),
        ("3c", "bottleneck job rerun, everything cached, process wall", None,
         f"{_fmt(fig.get('bottleneck_cached_wall_s'))} s (whole run reused: {fig.get('bottleneck_cached_run_reused')}, "
         f"TFT reused: {fig.get('bottleneck_cached_tft_reused')})",
         fig.get("bottleneck_cached_peak_rss")),
        ("3d", f"bottleneck job, N/10 = {meta.get('n_small')} images (memory)", None,
         f"{_fmt(fig.get('bottleneck_small_wall_s'))} s", fig.get("bottleneck_n_peak_rss")),
        ("4a", "scoring job, steady state (posts scored progress rate)", fig.get("scoring_steady_ips"), "", None),
        ("4b", "scoring job, process wall", ratio(meta["n"], fig.get("scoring_wall_s")), f"{_fmt(fig.get('scoring_wall_s'))} s",
         fig.get("scoring_10n_peak_rss")),
        ("4c", f"scoring job, N/10 = {meta.get('n_small')} posts (memory)", None, f"{_fmt(fig.get('scoring_small_wall_s'))} s",
         fig.get("scoring_n_peak_rss")),
        ("5", "peer: Beam's RunInference + TFModelHandlerTensor + PIL resize example, same images, process wall",
         ratio(meta["n"], fig.get("peer_wall_s")), f"{_fmt(fig.get('peer_wall_s'))} s", fig.get("peer_peak_rss")),
        ("6a", f"rescoring {meta.get('rescore_n', 0):,} stored embeddings, head only (job summary), first run: stored "
               "files partly evicted from the page cache, read from disk", fig.get("rescore_first_pps"),
         f"{_fmt(fig.get('rescore_first_seconds'))} s", None),
        ("6b", "the same, second run: stored files in the page cache (the goal's figure)", fig.get("rescore_pps"),
         f"{_fmt(fig.get('rescore_seconds'))} s", None),
        ("6c", "rescoring second run, process wall", ratio(fig.get("rescore_scored"), fig.get("rescore_wall_s")),
         f"{_fmt(fig.get('rescore_wall_s'))} s", fig.get("rescore_peak_rss")),
    ]
    for num, what, rate, time_, rss in rows:
        lines.append(f"| {num} | {what} | {_fmt(rate)} | {time_} | {_mib(rss)} |")
    limit = fig.get("limit") or {}
    if limit.get("kinds"):
        lines += ["", "## Where the time goes (per image, measured in the limit's process)", "",
                  "| image kind | decode, full (ms) | decode, reduced scale (ms) | decoded size, reduced | preprocess (ms) |",
                  "|---|---:|---:|---|---:|"]
        for kind, k in limit["kinds"].items():
            lines.append(f"| {kind} | {k['full_ms']:.1f} | {k['draft_ms']:.1f} | {k['draft_shape']} | {k['prepare_ms']:.1f} |")
    engines = fig.get("engines") or {}
    if engines.get("forward"):
        lines += ["", "Backbone forward pass per engine (ms per image; best and median of interleaved rounds, CPU ms):", "",
                  "| engine | batch | best ms | median ms | CPU ms |", "|---|---:|---:|---:|---:|"]
        for row in engines["forward"]:
            lines.append(f"| {row['engine']} | {row['batch']} | {row['best_ms']:.1f} | {row['median_ms']:.1f} | {row['cpu_ms']:.1f} |")
    if engines.get("accuracy"):
        lines += ["", "Engines on the real benchmarks (a softmax-regression head trained on SavedModel train embeddings, "
                      "applied to each engine's test embeddings):", "",
                  "| engine | benchmark | test accuracy | max abs embedding difference vs SavedModel |", "|---|---|---:|---:|"]
        for row in engines["accuracy"]:
            lines.append(f"| {row['engine']} | {row['benchmark']} | {row['accuracy']:.1%} | {row['max_abs_embedding']:.2e} |")
    parity = fig.get("decode_parity") or {}
    if parity:
        lines += ["", "## What the reduced-scale decode changes", ""]
        for row in parity.get("rows", []):
            lines.append(f"* {row}")
    cpu = fig.get("cpu_seconds") or {}
    if cpu:
        lines += ["", "CPU seconds (user + system) per process: " + ", ".join(f"{t} {v:.1f}" for t, v in cpu.items()) + "."]
    steady = fig.get("scoring_steady_ips")
    if steady:
        per_vcpu = steady / cores
        lines += ["", "## On Dataflow", "",
                  f"Scoring the archive mix ran at {steady:.1f} images/s on {cores} vCPUs here: **{per_vcpu:.1f} images/s per "
                  f"vCPU**. At Dataflow batch list prices of ${DEFAULT_VCPU_HOUR_USD}/vCPU-hour and ${DEFAULT_GB_HOUR_USD}/GB-hour "
                  f"({DEFAULT_GB_PER_VCPU} GB per vCPU, n1-standard; us-central1, check current prices), one million posts cost "
                  f"about **${cost_per_million(per_vcpu):.2f}** in worker time ({1e6 / per_vcpu / 3600:,.0f} vCPU-hours), before "
                  "Shuffle, storage and egress, if Dataflow vCPUs perform like these shared cores."]
        if fig.get("rescore_pps"):
            pps = fig["rescore_pps"]
            lines += ["", f"Rescoring ran at {pps:,.0f} posts/s ({pps / cores:,.0f} per vCPU): about "
                          f"${cost_per_million(pps / cores):.4f} per million posts."]
    for part, error in (fig.get("failures") or {}).items():
        lines += ["", f"**{part} failed in this run:** `{error.strip().splitlines()[-1][:300]}`"]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"
