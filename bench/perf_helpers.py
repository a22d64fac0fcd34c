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
GOALS = {
    "job_vs_limit": 0.9,          # bottleneck and scoring jobs, x the tight-loop limit
    "job_vs_naive": 3.0,          # both jobs, x one-model-call-per-image
    "rescore_posts_per_s": 20_000,
    "cached_speedup": 20.0,       # cold bottleneck run / all-cached rerun
    "memory_growth": 0.10,        # peak RSS at 4N vs N
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


def render_photo(seed: int, label: str, width: int, height: int, fmt: str = "JPEG", quality: int = 92,
                 orientation: int = 1, noise: float = 7.0) -> bytes:
    """A textured, noisy ``width`` x ``height`` image with its brand mark, deterministic by seed.

    At 12-24 MP and quality 92 the noise puts JPEGs at 2-5 MB, as phone cameras write them.
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


def generate_archive(root: str | Path, n: int, seed: int = 0) -> Archive:
    """``n`` distinct images in the realistic mix (reused when already there) and their manifests."""
    root = Path(root)
    folder = root / f"archive-s{seed}"
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
        width, height = sizes[int(rng.integers(0, len(sizes)))]
        if not path.is_file():
            if kind == "phone":
                base = i % PHONE_BASES
                if base not in bases:
                    w, h = MIX[0][2][base % len(MIX[0][2])]
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
            width, height = MIX[0][2][base % len(MIX[0][2])]
        images.append(path)
        count, total, mp = stats.get(kind, (0, 0, 0.0))
        stats[kind] = (count + 1, total + path.stat().st_size, mp + width * height / 1e6)
        labelled.append({"uri": str(path), "label": label, "split": SPLIT_CYCLE[(i // len(LABELS)) % len(SPLIT_CYCLE)]})
    manifests = root / f"archive-manifests-n{n}-s{seed}"
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


def goal_checks(fig: dict) -> list[dict]:
    """The issue's goals against the figures: [{'goal', 'value', 'target', 'met'}]."""
    checks = []

    def check(goal, value, target, higher=True):
        met = None if value is None else (value >= target if higher else value <= target)
        checks.append({"goal": goal, "value": value, "target": target, "met": met})

    limit, naive = fig.get("limit_ips"), fig.get("naive_ips")
    for job in ("bottleneck", "scoring"):
        check(f"{job} job (steady) >= {GOALS['job_vs_limit']} x limit", ratio(fig.get(f"{job}_steady_ips"), limit),
              GOALS["job_vs_limit"])
        check(f"{job} job (pipeline incl. start-up) >= {GOALS['job_vs_limit']} x limit",
              ratio(fig.get(f"{job}_pipeline_ips"), limit), GOALS["job_vs_limit"])
        check(f"{job} job (steady) >= {GOALS['job_vs_naive']:g} x naive", ratio(fig.get(f"{job}_steady_ips"), naive),
              GOALS["job_vs_naive"])
    check(f"rescoring >= {GOALS['rescore_posts_per_s']:,} posts/s (job summary, start-up included)", fig.get("rescore_pps"),
          GOALS["rescore_posts_per_s"])
    check(f"rescoring >= {GOALS['rescore_posts_per_s']:,} posts/s (marginal, start-up excluded)",
          fig.get("rescore_marginal_pps"), GOALS["rescore_posts_per_s"])
    check(f"all-cached rerun >= {GOALS['cached_speedup']:g} x faster (process wall)",
          ratio(fig.get("bottleneck_cold_wall_s"), fig.get("bottleneck_cached_wall_s")), GOALS["cached_speedup"])
    check(f"all-cached rerun >= {GOALS['cached_speedup']:g} x faster (embedding pipeline)",
          ratio(fig.get("bottleneck_cold_embed_s"), fig.get("bottleneck_cached_embed_s")), GOALS["cached_speedup"])
    growth = ratio(fig.get("scoring_4n_peak_rss"), fig.get("scoring_n_peak_rss"))
    check(f"peak RSS at 4N within {GOALS['memory_growth']:.0%} of N (4N / N - 1)",
          None if growth is None else growth - 1, GOALS["memory_growth"], higher=False)
    return checks


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


def render_report(fig: dict, meta: dict, notes: str = "") -> str:
    """The results file: figures, ratios vs goals, Dataflow translation, notes."""
    mib = lambda b: None if not b else b / 2**20  # noqa: E731
    cores = meta["machine"]["cores"] or 1
    lines = [
        "# Performance benchmark results",
        "",
        f"Run {meta['date']} on {meta['machine']['cpu']}, {cores} cores, {meta['machine']['memory_mb']:,} MB RAM; "
        f"1-minute load average {meta['load_before'][0]:.2f} before and {meta['load_after'][0]:.2f} after the run "
        f"(other work on the machine shares these cores).",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"N = {meta['n']} synthetic posts, {meta['image_size']}x{meta['image_size']} JPEG, mean "
        f"{meta['mean_kb']:.0f} KB; backbone `{meta['backbone']}` ({meta['input_size']} px); "
        f"jobs on the DirectRunner with `{meta['runner_flags']}`, batch size {meta['batch_size']}.",
        "",
        "## Figures",
        "",
        "| # | measurement | images or posts / s | time | peak RSS (process tree) |",
        "|---|---|---:|---|---:|",
    ]
    rows = [
        ("1", f"limit: decode + preprocess + forward, tight loop, best of {meta.get('limit_configs', 'n/a')}",
         fig.get("limit_ips"), fig.get("limit_detail", ""), fig.get("limit_peak_rss")),
        ("2", "naive: one eager preprocess + one model call per image", fig.get("naive_ips"), "", fig.get("naive_peak_rss")),
        ("3a", "bottleneck job, steady state (CNN progress rate)", fig.get("bottleneck_steady_ips"), "", None),
        ("3b", "bottleneck job, embedding pipeline incl. its start-up (summary)", fig.get("bottleneck_pipeline_ips"),
         f"{_fmt(fig.get('bottleneck_cold_embed_s'))} s embedding + {_fmt(fig.get('bottleneck_cold_tft_s'))} s TFT",
         None),
        ("3c", "bottleneck job, process wall incl. Python start, TFT", fig.get("bottleneck_wall_ips"),
         f"{_fmt(fig.get('bottleneck_cold_wall_s'))} s", fig.get("bottleneck_cold_peak_rss")),
        ("4a", "scoring job, steady state (posts scored progress rate)", fig.get("scoring_steady_ips"), "", None),
        ("4b", "scoring job, pipeline incl. its start-up (summary)", fig.get("scoring_pipeline_ips"),
         f"{_fmt(fig.get('scoring_n_seconds'))} s", None),
        ("4c", "scoring job, process wall incl. Python start", fig.get("scoring_wall_ips"),
         f"{_fmt(fig.get('scoring_n_wall_s'))} s", fig.get("scoring_n_peak_rss")),
        ("5a", f"rescoring {meta.get('rescore_n', 0):,} stored embeddings, head only (summary)", fig.get("rescore_pps"),
         f"{_fmt(fig.get('rescore_seconds'))} s", None),
        ("5b", "rescoring, process wall incl. Python start", fig.get("rescore_wall_pps"),
         f"{_fmt(fig.get('rescore_wall_s'))} s", fig.get("rescore_peak_rss")),
        ("5c", f"rescoring, marginal rate: (5a minus a {fig.get('rescore_part_n', 0):,}-post run) / their time difference",
         fig.get("rescore_marginal_pps"), f"{_fmt(fig.get('rescore_part_seconds'))} s for the smaller run", None),
        ("6", "bottleneck job rerun, everything cached (process wall)", None,
         f"{_fmt(fig.get('bottleneck_cached_wall_s'))} s wall; {_fmt(fig.get('bottleneck_cached_embed_s'))} s embedding + "
         f"{_fmt(fig.get('bottleneck_cached_tft_s'))} s TFT; {fig.get('bottleneck_cached_cnn', 'n/a')} CNN images",
         fig.get("bottleneck_cached_peak_rss")),
        ("7a", f"scoring job peak memory, N = {meta['n']} posts", None, f"{_fmt(fig.get('scoring_n_wall_s'))} s",
         fig.get("scoring_n_peak_rss")),
        ("7b", f"scoring job peak memory, 4N = {4 * meta['n']} posts", fig.get("scoring_4n_steady_ips"),
         f"{_fmt(fig.get('scoring_4n_wall_s'))} s", fig.get("scoring_4n_peak_rss")),
    ]
    for num, what, rate, time_, rss in rows:
        rss_text = f"{mib(rss):,.0f} MiB" if rss else ""
        lines.append(f"| {num} | {what} | {_fmt(rate)} | {time_} | {rss_text} |")
    lines += ["", "## Ratios against the goals", "", "| goal | value | target | met |", "|---|---:|---:|---|"]
    for c in goal_checks(fig):
        value = "n/a" if c["value"] is None else (f"{c['value']:+.1%}" if "RSS" in c["goal"] else f"{c['value']:,.2f}")
        target = f"{c['target']:.0%}" if "RSS" in c["goal"] else f"{c['target']:,g}"
        met = "n/a" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(f"| {c['goal']} | {value} | {target} | {met} |")
    limit = fig.get("limit") or {}
    if limit.get("forward_ms_per_image"):
        forward = limit["forward_ms_per_image"]
        best_b = str(limit.get("best", {}).get("batch_size", ""))
        lines += ["", "## Where the time goes (per image, one process, measured in the limit's process)", "",
                  "| step | ms per image |", "|---|---:|",
                  f"| read + decode 640x640 JPEG (Pillow) | {limit['decode_ms']:.1f} |",
                  f"| preprocess, eager TF ops (`brandlens.preprocess.prepare`) | {limit['prepare_eager_ms']:.1f} |",
                  f"| preprocess, traced `tf.function` (`beam_jobs.common.images.prepare_image`; max abs difference "
                  f"{limit['prepare_parity_max_abs']:g}) | {limit['prepare_traced_ms']:.1f} |"]
        for b, ms in sorted(forward.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| backbone forward pass, batch {b} | {ms:.1f} |")
        if best_b in forward:
            total = limit["decode_ms"] + limit["prepare_traced_ms"] + forward[best_b]
            lines.append("")
            lines.append(f"At batch {best_b} the forward pass is {forward[best_b] / total:.0%} of the "
                         f"{total:.1f} ms an image costs in the serial loop ({1000 / total:.1f} images/s).")
    cold, cached = fig.get("bottleneck_cold_wall_s"), fig.get("bottleneck_cached_wall_s")
    if cold and cached and fig.get("bottleneck_cold_total_s") is not None:
        lines += ["", "Bottleneck job, cold vs all-cached (seconds):", "",
                  "| part | cold | all cached |", "|---|---:|---:|"]
        for what, a, b in (
                ("process start and imports (wall minus the job's own total)", cold - fig["bottleneck_cold_total_s"],
                 cached - fig["bottleneck_cached_total_s"]),
                ("embedding pipeline (read, hash, cache join, decode, CNN, write)", fig["bottleneck_cold_embed_s"],
                 fig["bottleneck_cached_embed_s"]),
                ("tensorflow-transform pipeline (analyse + transform every split)", fig["bottleneck_cold_tft_s"],
                 fig["bottleneck_cached_tft_s"]),
                ("process wall", cold, cached)):
            lines.append(f"| {what} | {a:.1f} | {b:.1f} |")
    n_rss, x4_rss = fig.get("scoring_n_peak_rss"), fig.get("scoring_4n_peak_rss")
    if n_rss and x4_rss:
        per_post = (x4_rss - n_rss) / (3 * meta["n"])
        lines += ["", f"Scoring memory: {n_rss / 2**20:,.0f} MiB at N, {x4_rss / 2**20:,.0f} MiB at 4N: "
                      f"{per_post / 1024:+.1f} KiB per extra post."]
    cpu = fig.get("cpu_seconds") or {}
    if cpu:
        lines += ["", "CPU seconds (user + system) per process: " +
                  ", ".join(f"{tag} {seconds:.1f}" for tag, seconds in cpu.items()) + "."]
    steady = fig.get("scoring_steady_ips")
    if steady:
        per_vcpu = steady / cores
        lines += [
            "", "## On Dataflow", "",
            f"Scoring ran at {steady:.1f} images/s on {cores} vCPUs here: **{per_vcpu:.1f} images/s per vCPU**. "
            f"At Dataflow batch list prices of ${DEFAULT_VCPU_HOUR_USD}/vCPU-hour and ${DEFAULT_GB_HOUR_USD}/GB-hour "
            f"({DEFAULT_GB_PER_VCPU} GB per vCPU, n1-standard workers; us-central1, check current prices), one million "
            f"posts cost about **${cost_per_million(per_vcpu):.2f}** in worker time "
            f"({1e6 / per_vcpu / 3600:,.0f} vCPU-hours), before Shuffle, storage and egress. "
            "This assumes Dataflow vCPUs perform like these cores and workers run at this steady state; "
            "a worker's start-up (~minutes, image pull and model load) is amortised over millions of posts.",
        ]
        rescore = fig.get("rescore_pps")
        if rescore:
            lines.append("")
            lines.append(f"Rescoring (head only) ran at {rescore:,.0f} posts/s here ({rescore / cores:,.0f} per vCPU): "
                         f"a million posts cost about ${cost_per_million(rescore / cores):.4f}.")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"
