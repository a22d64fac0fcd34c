"""The review app's web layer (FastAPI + Jinja2 templates, served by uvicorn).

Pages: the grid (``/``), a post (``/post/{id}``), 'try the model' (``/try``) and
charts (``/charts``). Every value reaches HTML through Jinja2's autoescaping;
images are only ever addressed by post id (:mod:`brandlens.review.images`);
forms carry a per-process token, so another web page cannot post corrections
through the reviewer's browser; uploads are capped in size and must decode as images.
"""

from __future__ import annotations

import base64
import functools
import logging
import secrets
import socket
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from brandlens import __version__
from brandlens.errors import BrandlensError
from brandlens.review import charts, images
from brandlens.review.archive import BANDS, STATUSES, Archive, Filters
from brandlens.review.config import ReviewConfig
from brandlens.review.corrections import VERDICTS, CorrectionError, CorrectionLog, make_correction
from brandlens.review.paging import SORTS
from brandlens.review.scorer import LiveModel, read_card

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
WHO_COOKIE = "brandlens_reviewer"
MAX_IMAGE_BYTES = 64 * 1024 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
MISSING_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="320" height="320"><rect width="100%" height="100%" '
               b'fill="#ddd"/><text x="50%" y="50%" text-anchor="middle" font-family="sans-serif" fill="#555">'
               b'image unavailable</text></svg>')


class ReviewApp:
    """What the routes share: the archive, the corrections log, the live model."""

    def __init__(self, config: ReviewConfig):
        self.config = config
        card = read_card(config.model) if config.model else None
        self.archive = Archive(config.scores, card)
        self.log = CorrectionLog(config.corrections_path)
        self.archive.note_corrections(self.log.read())
        self.live = LiveModel(config.model) if config.model else None
        self.token = secrets.token_urlsafe(24)
        self.image_bases = images.image_bases(config.image_root, [str(run.get("input", "")) for run in self.archive.runs])
        self.picture = functools.lru_cache(maxsize=4096)(self._picture)

    def _picture(self, post_id: str, size: str) -> bytes:
        uri = self.archive.image_uri(post_id)
        if uri is None:
            raise images.ImageUnavailable(f"no post {post_id!r} in the archive")
        rgb = images.decode(images.read_image(uri, self.image_bases, MAX_IMAGE_BYTES))
        return images.jpeg(rgb, images.SIZES[size])

    def model_version(self, asked: str | None) -> str:
        """The model whose rows are shown: as asked ("*": all), else the newest when the archive holds several."""
        if asked is None:
            return self.archive.model_versions[0] if len(self.archive.model_versions) > 1 else ""
        return "" if asked == "*" else asked

    def filters(self, q) -> Filters:
        def number(name):
            text = (q.get(name) or "").strip()
            if not text:
                return None
            try:
                return float(text)
            except ValueError:
                raise BrandlensError(f"{name} must be a number, not {text[:20]!r}") from None

        return Filters(brand=q.get("brand", ""), date_from=q.get("date_from", ""), date_to=q.get("date_to", ""),
                       band=q.get("band", "") if q.get("band", "") in BANDS else "", conf_min=number("conf_min"),
                       conf_max=number("conf_max"), status=q.get("status", "") if q.get("status", "") in STATUSES else "",
                       model_version=self.model_version(q.get("model_version")),
                       carried={c: q.get(f"c_{c}", "") for c in self.archive.carried if q.get(f"c_{c}")})


def create_app(config: ReviewConfig) -> FastAPI:
    state = ReviewApp(config)
    archive = state.archive
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["path"] = _path
    app = FastAPI(title="brandlens review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = state
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    labels = list(archive.model.labels)
    upload_limit = config.max_upload_bytes

    @app.middleware("http")
    async def guard(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if request.method == "POST" and length.isdigit() and int(length) > upload_limit + 1024 * 1024:
            await _discard_body(request)
            return page(request, "message.html", {"title": "Too large", "message": _too_large(int(length), upload_limit)}, 413)
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def page(request: Request, name: str, context: dict, status: int = 200) -> HTMLResponse:
        base = {"labels": labels, "version": __version__, "counts": archive.corrections_count(), "rows": archive.rows,
                "token": state.token, "live": state.live, "scores": config.scores, "request": request}
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    def check_token(form) -> None:
        if not secrets.compare_digest(str(form.get("token", "")), state.token):
            raise BrandlensError("this form is stale or came from another site: reload the page and try again")

    @app.get("/", response_class=HTMLResponse)
    def grid(request: Request):
        q = request.query_params
        sort = SORTS.get(q.get("sort", ""), SORTS["confidence"])
        try:
            filters = state.filters(q)
            result = archive.page(filters, sort, config.page_size, after=q.get("after") or None,
                                  before=q.get("before") or None, last=q.get("last") == "1")
        except (BrandlensError, ValueError) as exc:
            return page(request, "message.html", {"title": "Bad filter", "message": str(exc), "back": "/"}, 400)
        kept = {k: v for k, v in q.multi_items() if k not in ("after", "before", "last") and v}

        def link(**changes) -> str:
            return "/?" + urlencode({**kept, **changes})

        for row in result.rows:
            row["_overlays"] = images.overlays(row)
            row["_scores"] = _scores(row, archive)
        return page(request, "grid.html", {"page": result, "sort": sort, "sorts": SORTS, "filters": filters, "q": q,
                                           "bands": BANDS, "statuses": STATUSES, "carried": archive.carried,
                                           "dates": archive.dates, "link": link,
                                           "model_versions": archive.model_versions,
                                           "query": urlencode(kept)})

    @app.get("/queue")
    def queue():
        return RedirectResponse("/?sort=uncertain&status=uncorrected", status_code=303)

    @app.get("/post/{post_id:path}", response_class=HTMLResponse)
    def post(request: Request, post_id: str, model_version: str = "", saved: str = ""):
        return post_page(request, post_id, model_version, saved=bool(saved))

    def post_page(request, post_id, model_version="", error="", saved=False, status=200):
        rows = archive.post(post_id, model_version)
        if not rows:
            return page(request, "message.html", {"title": "No such post", "message": f"no post {post_id!r} in this archive",
                                                  "back": "/"}, 404)
        row = rows[0]
        history = [c for c in state.log.read() if c.post_id == post_id]
        hidden = {"_row", "_uncertainty", "brands", "box"}
        carried = [(c, row.get(c)) for c in archive.carried]
        fixed = [(k, v) for k, v in row.items() if k not in hidden and not k.startswith("score_") and k not in archive.carried]
        return page(request, "post.html", {
            "row": row, "versions": rows, "scores_list": _scores(row, archive), "overlays": images.overlays(row),
            "brands": row.get("brands") or [], "carried_values": carried, "fixed": fixed, "run": archive.run_of(row),
            "history": history, "latest": history[-1] if history else None, "error": error, "saved": saved,
            "verdicts": VERDICTS, "who": request.cookies.get(WHO_COOKIE) or config.reviewer,
            "threshold": archive.model.thresholds.get(row.get("model_version"))}, status)

    @app.post("/correct/{post_id:path}")
    async def correct(request: Request, post_id: str):
        form = await request.form(max_files=0, max_fields=200)
        rows = archive.post(post_id, str(form.get("model_version", "")))
        if not rows:
            return page(request, "message.html", {"title": "No such post", "message": f"no post {post_id!r}", "back": "/"}, 404)
        try:
            check_token(form)
            chosen = [str(v) for v in form.getlist("labels")] + str(form.get("other_label", "")).split("|")
            post_row = dict(rows[0], image_uri=images.resolve(rows[0]["image_uri"], state.image_bases))
            correction = make_correction(post_row, str(form.get("verdict", "")), chosen, str(form.get("who", "")),
                                         str(form.get("note", "")))
        except (CorrectionError, BrandlensError) as exc:
            return post_page(request, post_id, rows[0]["model_version"], error=str(exc), status=400)
        await run_in_threadpool(state.log.append, correction)
        archive.note_corrections([correction])
        target = f"/post/{_path(post_id)}?saved=1"
        if form.get("then") == "next":
            following = archive.next_uncertain(exclude=post_id)
            target = f"/post/{_path(following)}?saved=1" if following else "/?sort=uncertain&status=uncorrected"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(WHO_COOKIE, correction.who, max_age=365 * 86400, samesite="strict", httponly=True)
        return response

    @app.get("/image/{post_id:path}")
    def image(post_id: str, size: str = "thumb"):
        if size not in images.SIZES:
            return Response("size must be thumb or large", status_code=400, media_type="text/plain")
        try:
            data = state.picture(post_id, size)
        except images.ImageUnavailable as exc:
            log.info("image of %r not shown: %s", post_id, exc)
            return Response(MISSING_SVG, status_code=404, media_type="image/svg+xml")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/try", response_class=HTMLResponse)
    def try_form(request: Request):
        return page(request, "try.html", {"limit_mb": config.max_upload_mb})

    @app.post("/try", response_class=HTMLResponse)
    async def try_model(request: Request):
        context = {"limit_mb": config.max_upload_mb}
        try:
            form = await request.form(max_files=1, max_fields=5)
            check_token(form)
        except BrandlensError as exc:
            return page(request, "try.html", {**context, "error": str(exc)}, 400)
        upload = form.get("photo")
        if not isinstance(upload, UploadFile) or not upload.filename:
            return page(request, "try.html", {**context, "error": "choose a photo to upload first"}, 400)
        data = await upload.read(upload_limit + 1)
        if len(data) > upload_limit:
            return page(request, "try.html", {**context, "error": _too_large(upload.size or len(data), upload_limit)}, 413)
        try:
            rgb = images.decode(data)
        except images.ImageUnavailable as exc:
            return page(request, "try.html", {**context, "error": f"{upload.filename} is {exc}: upload a JPEG, PNG, GIF, "
                                                                   "WebP, BMP or TIFF photo"}, 415)
        preview = base64.b64encode(images.jpeg(rgb, 768)).decode()
        if state.live is None:
            return page(request, "try.html", {**context, "preview": preview, "name": upload.filename,
                                              "error": "no model to try: start the app with --model MODEL"}, 409)
        result = await run_in_threadpool(state.live.score, rgb)
        heat = None
        if result.heatmap is not None:
            height, width = rgb.shape[:2]
            scale = 768 / max(height, width)
            size = (max(1, round(width * min(scale, 1))), max(1, round(height * min(scale, 1))))
            heat = base64.b64encode(images.heatmap_png(result.heatmap, size, result.window)).decode()
        return page(request, "try.html", {**context, "preview": preview, "name": upload.filename, "result": result,
                                          "heat": heat})

    @app.get("/charts", response_class=HTMLResponse)
    def charts_page(request: Request):
        try:
            state.filters(request.query_params)
        except BrandlensError as exc:
            return page(request, "message.html", {"title": "Bad filter", "message": str(exc), "back": "/charts"}, 400)
        kept = {k: v for k, v in request.query_params.multi_items() if k not in ("after", "before", "last") and v}
        return page(request, "charts.html", {"query": urlencode(kept), "multi_brand": archive.has_brands})

    @app.get("/chart/{name}.svg")
    def chart(request: Request, name: str):
        try:
            filters = state.filters(request.query_params)
            if name == "per-day":
                svg = charts.posts_per_day(archive.brand_days(filters))
            elif name == "share-of-voice":
                svg = charts.share_of_voice(archive.label_sets(filters))
            elif name == "co-occurrence":
                svg = charts.co_occurrence(archive.label_sets(filters), archive.has_brands)
            else:
                return Response("no such chart", status_code=404, media_type="text/plain")
        except BrandlensError as exc:
            return Response(str(exc), status_code=400, media_type="text/plain")
        return Response(svg, media_type="image/svg+xml")

    @app.get("/health")
    def health():
        return JSONResponse({"rows": archive.rows, "load_seconds": archive.load_seconds, "corrections": str(state.log.path),
                             "tensorflow_loaded": "tensorflow" in sys.modules, "model": state.live.version if state.live else None})

    return app


def _scores(row: dict, archive: Archive) -> list[tuple[str, float]]:
    pairs = [(label, row.get(column)) for column, label in zip(archive.score_columns, archive.model.labels)]
    return sorted(((label, float(v)) for label, v in pairs if v is not None), key=lambda p: -p[1])


def _path(post_id: str) -> str:
    """A post id as one URL path segment."""
    return quote(str(post_id), safe="")


async def _discard_body(request: Request, at_most: int = 256 * 1024 * 1024) -> None:
    """Read a refused body to its end (keeping none of it), so that the browser gets the answer, not a reset."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > at_most:
            break


def _too_large(size: int, limit: int) -> str:
    return f"the photo is {size / 1048576:.1f} MB; the limit is {limit / 1048576:.1f} MB (--max-upload-mb)"


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    return sock


def serve(config: ReviewConfig) -> int:
    import uvicorn

    app = create_app(config)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    state = app.state.review
    print(f"brandlens review: http://{host}:{port}/ ({state.archive.rows} posts from {config.scores}; "
          f"corrections -> {state.log.path}; loaded in {state.archive.load_seconds} s). Ctrl-C stops.", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0
