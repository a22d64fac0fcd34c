"""Small JPEG thumbnails as data: URIs, so an HTML report is one file that can be mailed."""

from __future__ import annotations

import base64
import io

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
