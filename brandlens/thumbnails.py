"""Small JPEG thumbnails as data: URIs, so an HTML report is one file that can be mailed."""

from __future__ import annotations

import base64
import html
import io
from typing import Callable

THUMBNAIL = 160


def thumbnail_data_uri(data: bytes | None) -> str | None:
    """A small JPEG as a data: URI, so the report is one file that can be mailed."""
    if data is None:
        return None
    from PIL import Image

    from brandlens.imaging import ImageDecodeError, decode_image

    try:
        img = Image.fromarray(decode_image(data))
    except ImageDecodeError:
        return None
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def error_table(rows: list[dict], thumbnail_of: Callable[[str], str | None], uri_text: Callable[[str], str] = str) -> list[str]:
    """HTML table lines for :func:`brandlens.metrics.error_rows`: thumbnail, true, predicted, top scores, uri."""
    lines = ["<table><tr><th>image</th><th>true</th><th>predicted</th><th>top scores</th><th>uri</th></tr>"]
    for row in rows:
        uri = thumbnail_of(row["uri"])
        picture = f"<img src='{uri}' alt=''>" if uri else "<span class='miss'>image not readable here</span>"
        scores = "<br>".join(f"<span class='score'>{html.escape(lab)} ({s:.5f})</span>" for lab, s in row["top"])
        lines.append(f"<tr><td>{picture}</td><td>{html.escape(row['label'])}</td><td>{html.escape(row['predicted'])}"
                     f"</td><td>{scores}</td><td>{html.escape(uri_text(row['uri']))}</td></tr>")
    lines.append("</table>")
    return lines
