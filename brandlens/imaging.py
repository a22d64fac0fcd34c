"""Turn untrusted image bytes into RGB arrays, or into an error with a stable reason.

Pure functions on Pillow + numpy, so Beam transforms, training and the CLI all see
the same pixels for the same bytes, and bad inputs are counted by ``reason``
instead of crashing a worker.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
ZERO_SIZE = "zero_size"
TOO_LARGE = "too_large"
UNSUPPORTED = "unsupported"
REASONS = (EMPTY, NOT_AN_IMAGE, TRUNCATED, CORRUPT, ZERO_SIZE, TOO_LARGE, UNSUPPORTED)

# 64 MP fits every full-frame camera (61 MP at most) and ordinary scans, while capping
# one decode at ~256 MB of RGBA, so a few parallel Beam threads cannot run a worker out
# of memory. Pillow's own limit (warns above ~89 MP, refuses above ~179 MP) is a
# process-wide setting that any library may change, so it is not relied on.
DEFAULT_MAX_PIXELS = 64_000_000

# Restricting Image.open to these keeps rarely used plugins (and EPS's Ghostscript)
# away from untrusted bytes. MPO camera files are opened by the JPEG plugin.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

# Signatures of the supported formats: bytes that start like one of them but that
# Pillow cannot open are a damaged image, not some other kind of file.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class ImageDecodeError(ValueError):
    """Bytes that do not decode to an image; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(reason, message)  # both in args, so the error pickles (Beam)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of the raw bytes: the identity used for dedup and caching."""
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str | None:
    """Pillow's format name for ``data`` (e.g. ``'JPEG'``) from its header alone, or None.

    Any Pillow format is named, supported or not. Headers so large that Pillow refuses
    to open them (twice ``Image.MAX_IMAGE_PIXELS``) give None as well.
    """
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.format
    except Exception:
        return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> np.ndarray:
    """Decode ``data`` into a C-contiguous HxWx3 uint8 RGB array, upright per EXIF.

    ``min_side``: decode a JPEG at a reduced scale (libjpeg's DCT-domain 1/2, 1/4 or 1/8,
    through Pillow's ``Image.draft``) as long as both sides stay >= ``min_side``. A
    24 MP phone photo then costs about a tenth of a full decode; callers pass what
    their own resize needs with a margin (:func:`brandlens.preprocess.decode_side`),
    so an exact antialiased resize still does the last step. Other formats, and
    None, decode at full size.

    Only the first frame of animated GIF/WebP and multi-page TIFF is used. Transparent
    pixels are composited on white, as browsers and catalogue pages show product cut-outs;
    Pillow's convert("RGB") would expose whatever colour they hold, usually black. Raises
    ImageDecodeError for every kind of bad bytes.

    The pixel count is checked against ``max_pixels`` from the header, before any pixel
    data is decoded. Pillow's own bomb check may still refuse smaller images if the
    process lowered ``Image.MAX_IMAGE_PIXELS``; the stricter limit wins. Warnings are
    silenced with warnings.catch_warnings, which is process-wide in Python < 3.14.
    """
    if not data:
        raise ImageDecodeError(EMPTY, "no bytes to decode")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # This global makes Pillow pad truncated files and ignore decoder errors, so
        # damaged images would pass as valid; flipping it back would affect other threads.
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated or "
            "corrupt images cannot be detected; find what sets it and leave it False"
        )
    reader = _Reader(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(reader, formats=SUPPORTED_FORMATS) as img:
                _check_size(img.size, max_pixels)
                if min_side:
                    img.draft(None, (int(min_side), int(min_side)))  # no-op for formats other than JPEG
                img.load()
                _check_size(img.size, max_pixels)  # a GIF frame may outgrow its screen
                ImageOps.exif_transpose(img, in_place=True)
                return _to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise _unidentified(data, reader.ran_out) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
        raise ImageDecodeError(TOO_LARGE, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed input
        raise ImageDecodeError(_damage_reason(exc, data), f"{type(exc).__name__}: {exc}") from exc


def upright_size(data: bytes) -> tuple[int, int]:
    """(height, width) of the image :func:`decode_image` makes of ``data`` at full scale, read from the header alone.

    Logo boxes are drawn on the upright full-size photo; this places them without decoding it.
    Raises ImageDecodeError when the header does not open.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as img:
                width, height = img.size
                orientation = img.getexif().get(0x0112, 1)
    except Exception as exc:
        raise ImageDecodeError(NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}") from exc
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(ZERO_SIZE, f"image is {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(
            TOO_LARGE, f"image is {width}x{height} = {width * height} pixels, above max_pixels={max_pixels}"
        )


class _Reader(io.BytesIO):
    """Remembers whether a parser asked for bytes past the end, i.e. the file was cut short."""

    ran_out = False

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if size is not None and size > len(chunk):
            self.ran_out = True
        return chunk


def _unidentified(data: bytes, ran_out: bool) -> ImageDecodeError:
    """Tell a damaged header, or a file of another format, from something not an image."""
    head = bytes(data[:12])
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        if ran_out:  # Pillow hides the parse error; the header needed more bytes than exist
            return ImageDecodeError(TRUNCATED, f"image header ends early: only {len(data)} bytes")
        return ImageDecodeError(CORRUPT, f"image header in {len(data)} bytes cannot be parsed")
    fmt = sniff_format(data)
    if fmt is not None:
        supported = ", ".join(SUPPORTED_FORMATS)
        return ImageDecodeError(UNSUPPORTED, f"{fmt} images are not supported (only {supported})")
    return ImageDecodeError(NOT_AN_IMAGE, f"{len(data)} bytes starting {head!r} are not an image")


def _damage_reason(exc: Exception, data: bytes) -> str:
    """``truncated`` when the bytes end early, ``too_large`` for metadata bombs, else ``corrupt``."""
    text = str(exc).lower()
    if "too large" in text:  # e.g. PNG text chunks above PngImagePlugin.MAX_TEXT_CHUNK
        return TOO_LARGE
    if isinstance(exc, EOFError) or "truncated" in text:
        return TRUNCATED
    # libwebp only says "could not create decoder object"; RIFF declares the file length.
    if data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        return TRUNCATED
    return CORRUPT


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode to HxWx3 uint8 RGB, or ImageDecodeError(UNSUPPORTED)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        gray = _high_depth_to_uint8(np.asarray(img), img.mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    try:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
            rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:]
            return np.ascontiguousarray(((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8))
        return np.array(img.convert("RGB"), dtype=np.uint8, order="C")
    except ValueError as exc:  # "conversion from X to Y not supported"
        raise ImageDecodeError(UNSUPPORTED, f"cannot convert mode {img.mode} to RGB: {exc}") from exc


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit ints (I;16*; I is taken to hold 16-bit data too) and 0..1 floats (F).

    Pillow's convert("L") clips these to 0..255 instead, turning most of the range white.
    """
    if mode == "F":
        unit = np.nan_to_num(values.astype(np.float64), nan=0.0)
        return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)
