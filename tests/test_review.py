"""The review app: paging, corrections, export and safety on generated archives; the analyst's journey in Chromium.

Archives are made here: a generated one in the product's Parquet schema (with the
localisation work's ``brands``/``box`` columns, ``bench.review``) and a real scoring
run of the sample posts with the session's trained ``sample_model``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.review import write_synthetic_archive
from brandlens.review import paging
from brandlens.review.archive import Archive, Filters
from brandlens.review.corrections import Correction, CorrectionError, CorrectionLog, make_correction
from brandlens.review.export import ExportConfig, export
from brandlens.review.images import normalised_box, overlays
from tests.conftest import REPO

ARTIFACTS = Path(os.environ.get("BRANDLENS_TEST_ARTIFACTS", REPO / "test-artifacts")) / "review"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = ("headless Chromium not found: install Debian's browser and driver with "
              "'apt-get update && apt-get install -y chromium chromium-driver' (.ci/run does this)")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """2,000 generated posts over 10 days, with brands and boxes, one row named hostilely."""
    root = tmp_path_factory.mktemp("synthetic")
    scores = write_synthetic_archive(root, 2000, days=10)
    hostile = root / "scores" / "dt=2026-10-03" / "part-hostile-00000-of-00001.parquet"
    table = pq.read_table(next((root / "scores" / "dt=2026-10-03").glob("part-synthetic-*.parquet"))).slice(0, 1).to_pylist()
    row = dict(table[0], post_id="<b>x</b>\"'&", caption="<script>alert('x')</script>", image_uri="../../../../etc/passwd")
    schema = pq.read_schema(next((root / "scores" / "dt=2026-10-03").glob("*.parquet")))
    pq.write_table(pa.Table.from_pylist([row], schema=schema), hostile)
    return scores


@pytest.fixture(scope="module")
def archive(synthetic) -> Archive:
    return Archive(str(synthetic))


class LiveServer:
    """The app on a free local port in this process (uvicorn in a thread)."""

    def __init__(self, config):
        import uvicorn

        from brandlens.review.app import bind, create_app

        self.app = create_app(config)
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the review app did not start"
            time.sleep(0.05)

    def get(self, path: str) -> tuple[int, bytes, dict]:
        try:
            with urllib.request.urlopen(self.url + path) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type}, method="POST")
        try:
            with urllib.request.urlopen(request) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def synthetic_server(synthetic, tmp_path_factory):
    from brandlens.review.config import ReviewConfig

    server = LiveServer(ReviewConfig(str(synthetic), corrections=tmp_path_factory.mktemp("c") / "corrections.jsonl",
                                     max_upload_mb=0.5))
    yield server
    server.stop()


def _multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = "----brandlens-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- paging

@pytest.mark.parametrize("sort_name", sorted(paging.SORTS))
def test_seek_pages_walk_the_same_order_as_a_full_sort_both_ways(archive, sort_name):
    sort = paging.SORTS[sort_name]
    filters = Filters(brand="acme", conf_min=0.5)
    where, params = archive.where(filters)
    expected = [r[0] for r in archive.cursor().execute(
        f"SELECT _row FROM posts WHERE {where} ORDER BY {paging.order_by(sort)}", params).fetchall()]
    assert 50 < len(expected) < 2000
    seen, page = [], archive.page(filters, sort, 37)
    while True:
        assert page.start == len(seen) and page.total == len(expected)
        seen += [r["_row"] for r in page.rows]
        if not page.next_cursor:
            break
        page = archive.page(filters, sort, 37, after=page.next_cursor)
    assert seen == expected
    back, page = [], archive.page(filters, sort, 37, last=True)
    while True:
        back = [r["_row"] for r in page.rows] + back
        assert page.start == len(expected) - len(back)
        if not page.prev_cursor:
            break
        page = archive.page(filters, sort, 37, before=page.prev_cursor)
    assert back == expected


def test_a_forged_cursor_is_refused():
    with pytest.raises(ValueError, match="cursor"):
        paging.decode_cursor("bm90LWpzb24", paging.SORTS["date"])
    with pytest.raises(ValueError, match="cursor"):
        paging.decode_cursor(paging.encode_cursor([1.0, "x"]), paging.SORTS["date"])


def test_filters_by_brand_list_date_band_and_carried_column(archive):
    rows = pq.read_table(archive.scores, partitioning="hive").to_pylist()
    got = archive.page(Filters(brand="zenith", date_from="2026-10-02", date_to="2026-10-04", band="medium",
                               carried={"source": "INSTA"}), paging.SORTS["date"], 500)
    want = {r["post_id"] for r in rows
            if (r["label"] == "zenith" or "zenith" in [b["label"] for b in r["brands"] or []])
            and "2026-10-02" <= str(r["dt"]) <= "2026-10-04" and 0.6 <= r["confidence"] < 0.9 and "insta" in r["source"]}
    assert want and {r["post_id"] for r in got.rows} == want and got.total == len(want)


def test_uncertain_first_is_the_distance_to_the_threshold(tmp_path, synthetic):
    card = {"version_id": "bl-synthetic", "labels": ["acme", "zenith", "neither"], "neither_label": "neither", "threshold": 0.7}
    with_threshold = Archive(str(synthetic), card)
    first = with_threshold.page(Filters(), paging.SORTS["uncertain"], 5).rows
    distances = [abs(max(r["score_acme"], r["score_zenith"]) - 0.7) for r in first]
    assert distances == sorted(distances) and distances[0] < 0.01
    assert with_threshold.model.thresholds == {"bl-synthetic": 0.7}


# --------------------------------------------------------------------------- corrections and export

POST = {"post_id": "p1", "label": "acme", "image_uri": "/x/p1.jpg", "content_hash": "h", "model_version": "m"}


def test_corrections_are_checked_before_they_are_saved():
    with pytest.raises(CorrectionError, match="who"):
        make_correction(POST, "wrong", ["zenith"], " ")
    with pytest.raises(CorrectionError, match="true label"):
        make_correction(POST, "wrong", [], "ann")
    with pytest.raises(CorrectionError, match="mark it 'right'"):
        make_correction(POST, "wrong", ["acme"], "ann")
    with pytest.raises(CorrectionError, match="not usable"):
        make_correction(POST, "wrong", ["a,b"], "ann")
    assert make_correction(POST, "right", ["ignored"], "ann").labels == ("acme",)


def test_the_log_is_append_only_and_survives_a_torn_last_line(tmp_path):
    log = CorrectionLog(tmp_path / "c" / "corrections.jsonl")
    log.append(make_correction(POST, "wrong", ["zenith"], "ann"))
    with open(log.path, "ab") as f:  # a crash mid-write leaves half a line
        f.write(b'{"post_id": "p1", "verd')
    log.append(make_correction(POST, "wrong", ["neither", "zenith"], "bob", note="two shoes"))
    lines = log.path.read_bytes().split(b"\n")
    assert len([line for line in lines if line]) == 3
    read = log.read()
    assert [c.who for c in read] == ["ann", "bob"]
    assert log.latest()["p1"].labels == ("neither", "zenith")
    assert Correction.from_json(read[1].to_json()) == read[1]


def test_export_relabels_the_training_manifest_and_adds_new_posts(tmp_path):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (images / name).write_bytes(b"x")
    base = tmp_path / "data" / "manifests" / "train.csv"
    base.parent.mkdir()
    base.write_text("uri,label,split,x1,y1,x2,y2\nimages/a.jpg,acme,test,1,1,5,5\nimages/b.jpg,zenith,train,,,,\n")
    log = CorrectionLog(tmp_path / "corrections.jsonl")
    log.append(make_correction(dict(POST, image_uri=str(images / "a.jpg")), "wrong", ["zenith"], "ann"))
    log.append(make_correction(dict(POST, post_id="p2", image_uri=str(images / "b.jpg"), label="zenith"), "right", [], "ann"))
    log.append(make_correction(dict(POST, post_id="p3", image_uri="images/c.jpg"), "wrong", ["neither"], "ann"))
    out = tmp_path / "retrain.csv"
    summary = export(ExportConfig(log.path, out, base, tmp_path / "data"))
    rows = list(csv.DictReader(out.open()))
    assert [(Path(r["uri"]).name, r["label"], r["split"], r["x1"]) for r in rows] == [
        ("a.jpg", "zenith", "test", ""), ("b.jpg", "zenith", "train", ""), ("c.jpg", "neither", "", "")]
    assert all(Path(r["uri"]).is_file() for r in rows)
    assert (summary["replaced_base_rows"], summary["added_rows"], summary["wrong"], summary["right"]) == (2, 1, 2, 1)


def test_export_rows_are_read_by_the_bottleneck_jobs_manifest_reader(tmp_path):
    from beam_jobs.bottlenecks.labels import annotate
    from beam_jobs.common.sources import read_manifest

    log = CorrectionLog(tmp_path / "corrections.jsonl")
    log.append(make_correction(dict(POST, image_uri=str(tmp_path / "a.jpg")), "wrong", ["zenith"], "ann"))
    out = tmp_path / "m.csv"
    export(ExportConfig(log.path, out, None, tmp_path))
    with open(out, "rb") as f:
        records = list(read_manifest(str(out), f, None))
    assert [(r.uri, annotate(r.metadata).label) for r in records] == [(str(tmp_path / "a.jpg"), "zenith")]


def test_boxes_are_read_from_lists_structs_and_brand_lists():
    assert normalised_box([0.1, 0.2, 0.5, 0.6]) == (0.1, 0.2, 0.5, 0.6)
    assert normalised_box({"x1": 0, "y1": 0, "x2": 1, "y2": 1}) == (0, 0, 1, 1)
    assert normalised_box([10, 20, 50, 60]) is None and normalised_box(None) is None and normalised_box("junk") is None
    row = {"label": "acme", "confidence": 0.9, "box": [0, 0, 0.5, 0.5],
           "brands": [{"label": "acme", "score": 0.9, "box": [0, 0, 0.5, 0.5]}, {"label": "zenith", "score": 0.6, "box": [0.5, 0.5, 1, 1]}]}
    assert [(o["label"], o["left"], o["width"]) for o in overlays(row)] == [("acme", 0, 50), ("zenith", 50, 50)]
    assert overlays({"label": "acme", "confidence": 0.9}) == []


# --------------------------------------------------------------------------- safety over HTTP

def test_images_are_served_only_by_post_id_and_re_encoded(synthetic_server):
    for path in ("/image/..%2F..%2F..%2Fetc%2Fpasswd", "/image/%2Fetc%2Fpasswd", "/image/nope",
                 "/image/" + urllib.parse.quote("<b>x</b>\"'&", safe=""), "/static/..%2Fapp.py", "/static/../app.py"):
        status, body, headers = synthetic_server.get(path)
        assert status == 404 and b"root:" not in body and b"import" not in body, path
    status, _, _ = synthetic_server.get("/image/post-0000001?size=../../x")
    assert status == 400


def test_every_value_is_escaped(synthetic_server):
    status, body, headers = synthetic_server.get("/?c_caption=" + urllib.parse.quote("<script>"))
    assert status == 200 and b"<script>alert" not in body and b"&lt;script&gt;alert" not in body  # caption not on the grid
    assert b"&lt;b&gt;x&lt;/b&gt;" in body and b"<b>x</b>" not in body
    status, body, _ = synthetic_server.get("/post/" + urllib.parse.quote("<b>x</b>\"'&", safe=""))
    assert status == 200 and b"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in body and b"<script>alert" not in body
    assert "default-src 'self'" in headers["content-security-policy"]


def test_uploads_must_be_images_under_the_limit_and_forms_need_the_token(synthetic_server):
    token = synthetic_server.app.state.review.token
    body, kind = _multipart({"token": token}, {"photo": ("notes.jpg", b"just text, not a photo")})
    status, page = synthetic_server.post("/try", body, kind)
    assert status == 415 and b"notes.jpg is not a usable image" in page
    body, kind = _multipart({"token": token}, {"photo": ("big.jpg", b"\xff\xd8" + b"0" * 600_000)})
    status, page = synthetic_server.post("/try", body, kind)
    assert status == 413 and b"the limit is 0.5 MB" in page
    body, kind = _multipart({"token": token}, {"photo": ("huge.jpg", b"0" * 2_000_000)})
    status, page = synthetic_server.post("/try", body, kind)
    assert status == 413 and b"the limit is 0.5 MB" in page
    body, kind = _multipart({"token": "forged"}, {"photo": ("x.jpg", b"x")})
    assert synthetic_server.post("/try", body, kind)[0] == 400
    form = urllib.parse.urlencode({"token": "forged", "verdict": "right", "who": "mallory"}).encode()
    status, page = synthetic_server.post("/correct/post-0000001", form, "application/x-www-form-urlencoded")
    assert status == 400 and b"another site" in page
    assert not synthetic_server.app.state.review.log.path.exists()


def test_charts_are_svg_from_the_archive(synthetic_server):
    for name in ("per-day", "share-of-voice", "co-occurrence"):
        status, body, headers = synthetic_server.get(f"/chart/{name}.svg?brand=acme")
        assert status == 200 and headers["content-type"].startswith("image/svg+xml") and b"<svg" in body
    assert synthetic_server.get("/chart/../../x.svg")[0] == 404


def test_the_command_starts_without_tensorflow(synthetic, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "brandlens.cli", "review", "--scores", str(synthetic), "--port", "0",
                                "--corrections", str(tmp_path / "c.jsonl")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    try:
        import selectors

        with selectors.DefaultSelector() as waiting:
            waiting.register(process.stdout, selectors.EVENT_READ)
            assert waiting.select(timeout=180), "brandlens review printed nothing in 180 s"
        line = process.stdout.readline()
        assert line.startswith("brandlens review: http://127.0.0.1:"), (line, process.stderr.read() if process.poll() is not None else "")
        url = line.split()[2]
        with urllib.request.urlopen(url + "health") as r:
            health = json.loads(r.read())
        assert health["rows"] == 2001 and health["tensorflow_loaded"] is False
    finally:
        process.terminate()
        process.wait(20)


# --------------------------------------------------------------------------- the analyst's journey in Chromium

@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(NO_BROWSER)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -c constraints.txt -e '.[test]'")
    import tempfile

    profile = tempfile.mkdtemp(prefix="brandlens-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _shot(driver, name: str) -> Path:
    path = ARTIFACTS / name
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(height + 40, 800), 3000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def _navigate(driver, element) -> None:
    """Click ``element`` and wait until the page it leads to has loaded."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    # A marker on the old document's window: the new page's window lacks it. Element staleness is not used: while the
    # document is being replaced Chromium may answer a check on the old node with an inspector error instead.
    driver.execute_script("window.__brandlensOldPage = true")
    element.click()

    def loaded(d) -> bool:
        try:
            return d.execute_script("return !window.__brandlensOldPage && document.readyState === 'complete'")
        except WebDriverException:  # the page is being swapped: ask again
            return False

    WebDriverWait(driver, 60).until(loaded)


def _images_loaded(driver) -> bool:
    """Every image on the page (lazy ones made eager) loaded, and none of them answered with an error."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
    failed = driver.execute_script("return performance.getEntriesByType('resource')"
                                   ".filter(e => e.responseStatus >= 400).map(e => e.name)")
    assert not failed, failed
    return driver.execute_script("return Array.from(document.images).every(i => i.naturalWidth > 0)")


@pytest.fixture(scope="module")
def scored_sample(sample_bottlenecks, sample_model, tmp_path_factory) -> tuple[Path, Path]:
    """A real scoring run of the sample's posts with the session's model: (archive folder, posts manifest)."""
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run

    posts = sample_bottlenecks.parent / "sample" / "posts.csv"
    out = tmp_path_factory.mktemp("review-archive") / "archive"
    summary = run(ScoringConfig(input=str(posts), model=str(sample_model), out=OutputConfig(str(out)), batch_size=16))
    assert summary["reconciliation"]["ok"]
    return out, posts


def test_analyst_journey_in_a_real_browser(browser, scored_sample, sample_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from brandlens.review.config import ReviewConfig

    archive_dir, posts = scored_sample
    rows = pq.read_table(str(archive_dir / "scores"), partitioning="hive").to_pylist()
    corrections = tmp_path / "corrections.jsonl"
    server = LiveServer(ReviewConfig(str(archive_dir / "scores"), model=sample_model, corrections=corrections,
                                     reviewer="ci", page_size=24))
    try:
        d = browser
        d.get(server.url + "/")
        cards = d.find_elements(By.CSS_SELECTOR, "#grid .card")
        assert len(cards) == min(24, len(rows))
        assert f"of {len(rows)}" in d.find_element(By.ID, "page-status").text
        assert _images_loaded(d)
        _shot(d, "1-grid.png")

        Select(d.find_element(By.ID, "f-brand")).select_by_value("acme")
        _navigate(d, d.find_element(By.ID, "apply"))
        acme = sorted((r for r in rows if r["label"] == "acme"), key=lambda r: -r["confidence"])
        assert f"of {len(acme)}," in d.find_element(By.ID, "page-status").text
        labels = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#grid .card .label")]
        assert labels == ["acme"] * min(24, len(acme))
        _shot(d, "2-grid-acme.png")

        first = d.find_element(By.CSS_SELECTOR, "#grid .card")
        post_id = first.get_attribute("data-post-id")
        assert post_id == acme[0]["post_id"]
        _navigate(d, first)
        assert post_id in d.find_element(By.ID, "post-title").text
        scores = d.find_elements(By.CSS_SELECTOR, "#scores tr")
        assert [s.find_element(By.TAG_NAME, "th").text for s in scores][0] == "acme" and len(scores) == 3
        lineage = d.find_element(By.ID, "lineage").text
        assert acme[0]["model_version"] in lineage and acme[0]["backbone"] in lineage and "run" in lineage
        assert _images_loaded(d)
        _shot(d, "3-post.png")

        d.find_element(By.ID, "verdict-wrong").click()
        d.find_element(By.ID, "truth-zenith").click()
        d.find_element(By.ID, "note").send_keys("the mark is zenith's <b>")
        who = d.find_element(By.ID, "who")
        who.clear()
        who.send_keys("ann analyst")
        _navigate(d, d.find_element(By.ID, "save"))
        assert "Correction saved: wrong (zenith)" in d.find_element(By.ID, "saved").text
        assert "ann analyst: wrong → zenith (the mark is zenith's <b>)" in d.find_element(By.ID, "history").text
        saved = [json.loads(line) for line in corrections.read_text().splitlines()]
        assert len(saved) == 1 and {k: saved[0][k] for k in ("post_id", "verdict", "labels", "who", "predicted", "model_version")} == {
            "post_id": post_id, "verdict": "wrong", "labels": ["zenith"], "who": "ann analyst", "predicted": "acme",
            "model_version": acme[0]["model_version"]}
        _shot(d, "4-post-corrected.png")

        d.find_element(By.ID, "verdict-right").click()  # changed my mind: "right" after all, then the next uncertain post
        _navigate(d, d.find_element(By.ID, "save-next"))
        assert post_id not in d.find_element(By.ID, "post-title").text and "Correction saved" in d.find_element(By.ID, "saved").text
        saved = [json.loads(line) for line in corrections.read_text().splitlines()]
        assert [(c["verdict"], c["labels"]) for c in saved] == [("wrong", ["zenith"]), ("right", ["acme"])]
        d.get(server.url + "/queue")
        queue = [c.get_attribute("data-post-id") for c in d.find_elements(By.CSS_SELECTOR, "#grid .card")]
        assert post_id not in queue and "uncertain first" in d.find_element(By.ID, "page-status").text
        _shot(d, "5-queue.png")

        photo = posts.parent / next(r for r in csv.DictReader(posts.open()) if "zenith" in r["image_uri"])["image_uri"]
        d.get(server.url + "/try")
        d.find_element(By.ID, "photo").send_keys(str(photo))
        _navigate(d, d.find_element(By.ID, "score"))
        from trainer.predict import predict

        expected = predict(sample_model, [photo])[0]
        assert d.find_element(By.ID, "live-label").text == expected.label
        live = [r.find_element(By.TAG_NAME, "th").text for r in d.find_elements(By.CSS_SELECTOR, "#live-scores tr")]
        assert live == [label for label, _ in expected.scores]
        _shot(d, "6-try.png")

        bad = tmp_path / "notes.jpg"
        bad.write_text("not a photo")
        d.find_element(By.ID, "photo").send_keys(str(bad))
        _navigate(d, d.find_element(By.ID, "score"))
        assert "notes.jpg is not a usable image" in d.find_element(By.ID, "error").text

        d.get(server.url + "/charts")
        assert _images_loaded(d) and len(d.find_elements(By.CSS_SELECTOR, ".charts img")) == 3
        _shot(d, "7-charts.png")
    finally:
        server.stop()


def test_evidence_boxes_over_real_photos_in_the_browser(browser, synthetic, sample_bottlenecks, tmp_path):
    """Where the archive has ``brands``/``box`` (the localisation work), the grid and post draw them."""
    from selenium.webdriver.common.by import By

    from brandlens.review.config import ReviewConfig

    photos = sorted(str(p) for p in (sample_bottlenecks.parent / "sample" / "images").rglob("*.jpg"))
    scores = write_synthetic_archive(tmp_path / "boxed", 300, days=3, image_uris=photos)
    server = LiveServer(ReviewConfig(str(scores), corrections=tmp_path / "c.jsonl", page_size=12))
    try:
        browser.get(server.url + "/?sort=confidence&brand=zenith")
        boxes = browser.find_elements(By.CSS_SELECTOR, "#grid .card .box")
        assert boxes and all("zenith" in b.text or "acme" in b.text for b in boxes)
        assert _images_loaded(browser)
        _shot(browser, "8-grid-overlays.png")
        _navigate(browser, browser.find_element(By.CSS_SELECTOR, "#grid .card"))
        assert browser.find_elements(By.CSS_SELECTOR, ".large .box") and browser.find_element(By.ID, "brands")
        _shot(browser, "9-post-overlays.png")
        browser.get(server.url + "/charts")
        assert _images_loaded(browser)
        _shot(browser, "10-charts-multi-brand.png")
    finally:
        server.stop()


# --------------------------------------------------------------------------- more than one model, crashes, live outputs

def test_an_archive_rescored_by_a_newer_model_shows_the_newest_rows_unless_asked(tmp_path):
    from brandlens.review.app import ReviewApp
    from brandlens.review.config import ReviewConfig

    scores = write_synthetic_archive(tmp_path, 200, days=2, localisation=False)
    newer = pq.read_table(str(scores), partitioning=None).to_pylist()
    for row in newer:
        row.update(model_version="bl-newer", scored_at=row["scored_at"].replace(year=2027))
    schema = pq.read_schema(next(scores.rglob("*.parquet")))
    for day in ("2026-10-01", "2026-10-02"):
        rows = [r for r in newer if r["posted_at"].startswith(day)]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), scores / f"dt={day}" / "part-newer-00000-of-00001.parquet")
    app = ReviewApp(ReviewConfig(str(scores), corrections=tmp_path / "c.jsonl"))
    assert app.archive.rows == 400 and app.archive.model_versions == ["bl-newer", "bl-synthetic"]
    assert app.filters({}).model_version == "bl-newer" and app.filters({"model_version": "*"}).model_version == ""
    page = app.archive.page(app.filters({}), paging.SORTS["uncertain"], 500)
    assert page.total == 200 and {r["model_version"] for r in page.rows} == {"bl-newer"}
    assert app.archive.post(page.rows[0]["post_id"])[0]["model_version"] == "bl-newer"


def test_acknowledged_corrections_survive_a_kill_at_any_moment(tmp_path):
    """A writer killed with SIGKILL mid-stream: every correction it reported saved is in the log and readable."""
    path = tmp_path / "corrections.jsonl"
    script = (
        "import sys\n"
        "from brandlens.review.corrections import CorrectionLog, make_correction\n"
        "log = CorrectionLog(sys.argv[1])\n"
        "post = {'post_id': 'p', 'label': 'acme', 'image_uri': '/x.jpg', 'content_hash': 'h', 'model_version': 'm'}\n"
        "for i in range(100000):\n"
        "    c = make_correction(dict(post, post_id=f'p{i}'), 'wrong', ['zenith'], 'ann', note='n' * (i % 3000))\n"
        "    log.append(c)\n"
        "    print(c.correction_id, flush=True)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for attempt, wait in enumerate((0.8, 1.3, 1.9)):
        process = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(wait)
        process.kill()
        acknowledged = process.stdout.read().split()
        process.wait()
        saved = {c.correction_id for c in CorrectionLog(path).read()}
        assert acknowledged and set(acknowledged) <= saved, attempt
    log = CorrectionLog(path)
    log.append(make_correction(POST, "right", [], "ann"))
    assert log.read()[-1].post_id == "p1" and log.path.read_bytes().endswith(b"\n")


def test_live_scores_draw_boxes_and_maps_when_the_model_returns_them():
    import numpy as np

    from brandlens.review.scorer import _boxes, _heatmap

    labels, scores = ["acme", "zenith", "neither"], np.array([0.7, 0.2, 0.1], np.float32)
    per_label = {"brand_boxes": np.array([[[0.1, 0.1, 0.4, 0.5], [0, 0, 1, 1], [0, 0, 1, 1]]], np.float32)}
    assert [(b["label"], b["left"], b["height"]) for b in _boxes(per_label, labels, scores, "acme")] == [("acme", 10.0, 40.0)]
    assert _boxes({"box": np.array([[0.5, 0.5, 1.0, 1.0]])}, labels, scores, "acme")[0]["width"] == 50.0
    assert _boxes({"scores": scores[None]}, labels, scores, "acme") == []
    maps = np.zeros((1, 4, 4, 3), np.float32)
    maps[0, 1, 2, 0] = 5
    heat = _heatmap({"evidence_maps": maps}, labels, scores, "neither")
    assert heat.shape == (4, 4) and heat[1, 2] == 5


def test_live_boxes_and_heat_lie_where_the_models_input_lies_in_the_photo():
    """A centre crop of a 200x100 photo is its middle 100x100 square: the input frame is not the photo's."""
    import io

    import numpy as np
    from PIL import Image

    from brandlens.evidence import input_box_to_image, input_window
    from brandlens.review.images import heatmap_png
    from brandlens.review.scorer import _boxes

    to_photo = lambda boxes: input_box_to_image(boxes, 100, 200, 1.0, "center_crop")  # noqa: E731
    whole = _boxes({"box": np.array([[0.0, 0.0, 1.0, 1.0]])}, ["acme"], np.array([1.0]), "acme", to_photo)[0]
    assert (whole["left"], whole["top"], whole["width"], whole["height"]) == (25.0, 0.0, 50.0, 100.0)
    left, top, side_x, side_y = input_window(100, 200, 1.0, "center_crop")
    png = heatmap_png(np.ones((4, 4)) * np.arange(4), (200, 100), (left / 200, top / 100, side_x / 200, side_y / 100))
    alpha = np.asarray(Image.open(io.BytesIO(png)))[..., 3]
    assert alpha.shape == (100, 200) and not alpha[:, :50].any() and not alpha[:, 150:].any() and alpha[:, 50:150].any()


def test_review_status_filters_and_the_corrections_command(archive, tmp_path, capsys):
    from brandlens.cli import main

    rows = archive.page(Filters(), paging.SORTS["confidence"], 3).rows
    posts = [archive.post(r["post_id"])[0] for r in rows]
    log = CorrectionLog(tmp_path / "corrections.jsonl")
    made = [make_correction(posts[0], "right", [], "ann"),
            make_correction(posts[1], "wrong", ["zenith" if posts[1]["label"] != "zenith" else "acme"], "ann")]
    for c in made:
        log.append(c)
    archive.note_corrections(made)
    try:
        ids = lambda status: [r["post_id"] for r in archive.page(Filters(status=status), paging.SORTS["confidence"], 5000).rows]  # noqa: E731
        assert ids("right") == [posts[0]["post_id"]] and ids("wrong") == [posts[1]["post_id"]]
        assert set(ids("corrected")) == {p["post_id"] for p in posts[:2]} and posts[0]["post_id"] not in ids("uncorrected")
        assert archive.next_uncertain() not in {p["post_id"] for p in posts[:2]}
    finally:
        archive.cursor().execute("DELETE FROM corrections")
    out = tmp_path / "m.csv"
    assert main(["corrections", "--corrections", str(log.path), "--output", str(out)]) == 0
    assert "2 rows; 2 corrected posts (1 right, 1 wrong)" in capsys.readouterr().out
    assert main(["corrections", "--corrections", str(tmp_path / "none.jsonl"), "--output", str(out)]) == 2
    assert "no corrections in" in capsys.readouterr().err
