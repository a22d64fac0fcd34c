"""brandlens.imaging: every test builds its own image bytes in memory."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from brandlens import imaging
from brandlens.imaging import (
    DEFAULT_MAX_PIXELS,
    REASONS,
    ImageDecodeError,
    content_hash,
    decode_image,
    sniff_format,
)

RED = (220, 30, 40)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(size=(24, 16), colour=RED, mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def noisy_png(width=64, height=48) -> bytes:
    """Incompressible pixels, so the IDAT chunk is long enough to cut or damage."""
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def reason_of(data: bytes, **kwargs) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    assert info.value.reason in REASONS
    return info.value


def patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite IHDR's width and height and fix its CRC, without touching pixel data."""
    patched = bytearray(data)
    at = patched.index(b"IHDR")
    patched[at + 4 : at + 12] = struct.pack(">II", width, height)
    patched[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(patched[at : at + 17])))
    return bytes(patched)


# Round trips


@pytest.mark.parametrize(
    "fmt, params, tolerance",
    [
        ("JPEG", {"quality": 95}, 6),
        ("PNG", {}, 0),
        ("WEBP", {"quality": 95}, 8),
        ("WEBP", {"lossless": True}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("GIF", {}, 0),
    ],
)
def test_round_trip(fmt, params, tolerance):
    pixels = decode_image(encode(solid(), fmt, **params))
    assert pixels.shape == (16, 24, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous and pixels.flags.writeable
    assert np.abs(pixels.astype(int) - RED).max() <= tolerance


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt):
    data = encode(solid(colour=RED), fmt, save_all=True, append_images=[solid(colour=(0, 0, 255))], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    pixels = decode_image(data)
    assert np.abs(pixels.astype(int) - RED).max() <= 2


def test_bytearray_and_memoryview_are_accepted():
    data = encode(solid(), "PNG")
    assert np.array_equal(decode_image(bytearray(data)), decode_image(memoryview(data)))


@pytest.mark.parametrize(
    "orientation, red_at",
    [(6, (1, 8)), (8, (18, 1)), (3, (8, 18)), (1, (1, 1))],  # 6: turn clockwise, 8: counter-clockwise
)
def test_exif_orientation(orientation, red_at):
    image = solid(size=(20, 10), colour=(255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 4, 4))  # marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = decode_image(encode(image, "JPEG", exif=exif, quality=95))
    assert pixels.shape == ((10, 20, 3) if orientation in (1, 3) else (20, 10, 3))
    assert pixels[red_at].tolist() == pytest.approx([255, 0, 0], abs=12)
    assert (pixels.astype(int).sum(axis=2) > 700).sum() > pixels.shape[0] * pixels.shape[1] * 0.8


# Modes


def test_grayscale_l():
    pixels = decode_image(encode(solid(colour=100, mode="L"), "PNG"))
    assert pixels.shape == (16, 24, 3)
    assert (pixels == 100).all()


def test_bilevel_1():
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    pixels = decode_image(encode(image, "PNG"))
    assert pixels[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_gray_alpha_la_composites_on_white():
    image = Image.new("LA", (3, 1))
    for x, value in enumerate([(100, 0), (100, 255), (0, 128)]):
        image.putpixel((x, 0), value)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    assert decode_image(data)[0, :, 0].tolist() == [255, 100, 127]


def test_rgba_transparent_pixel_is_white():
    image = Image.new("RGBA", (3, 1))
    for x, value in enumerate([(0, 0, 0, 0), (10, 20, 30, 255), (255, 0, 0, 128)]):
        image.putpixel((x, 0), value)
    pixels = decode_image(encode(image, "PNG"))
    assert pixels[0].tolist() == [[255, 255, 255], [10, 20, 30], [255, 127, 127]]


def test_palette_with_transparency():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((1, 0), 1)
    data = encode(image, "PNG", transparency=0)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    assert decode_image(data)[0].tolist() == [[255, 255, 255], [255, 0, 0]]


def test_palette_alpha_pa():
    image = Image.new("PA", (2, 1))
    image.putpalette([0, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), (1, 255))
    data = encode(image, "TIFF")  # Pillow writes PA only as TIFF
    assert Image.open(io.BytesIO(data)).mode == "PA"
    assert decode_image(data)[0].tolist() == [[255, 255, 255], [0, 255, 0]]


def test_rgb_with_transparent_colour_key():
    image = Image.new("RGB", (2, 1))
    image.putpixel((1, 0), (9, 8, 7))
    assert decode_image(encode(image, "PNG", transparency=(0, 0, 0)))[0].tolist() == [[255, 255, 255], [9, 8, 7]]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt):
    data = encode(solid(colour=(0, 255, 255, 0), mode="CMYK"), fmt)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert np.abs(decode_image(data).astype(int) - (255, 0, 0)).max() <= 3


def test_lab_tiff():
    data = encode(solid(colour=(255, 128, 128), mode="LAB"), "TIFF")  # L=100, a=b=0: white
    assert Image.open(io.BytesIO(data)).mode == "LAB"
    assert decode_image(data).min() >= 250


SIXTEEN_BIT = np.array([[0, 65535, 257, 32768]], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = [0, 255, 1, 128]


@pytest.mark.parametrize("fmt, mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B")])
def test_sixteen_bit_gray_is_scaled_not_clipped(fmt, mode):
    big_endian = SIXTEEN_BIT.astype(">u2") if mode == "I;16B" else SIXTEEN_BIT
    image = Image.frombytes(mode, (4, 1), big_endian.tobytes())
    data = encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    pixels = decode_image(data)
    assert pixels[0, :, 0].tolist() == SIXTEEN_BIT_AS_8
    assert (pixels == pixels[:, :, :1]).all()


def test_thirty_two_bit_int_i_is_read_as_sixteen_bit_range():
    values = np.array([[0, 65535, 70000, -5]], dtype=np.int32)
    data = encode(Image.fromarray(values), "TIFF")  # Pillow 12 deprecates writing I as PNG
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert decode_image(data)[0, :, 0].tolist() == [0, 255, 255, 0]


def test_float_f_is_read_as_unit_range():
    values = np.array([[0.0, 1.0, 0.5, np.nan, 7.0, -1.0]], dtype=np.float32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert decode_image(data)[0, :, 0].tolist() == [0, 255, 128, 0, 255, 0]


def test_mode_pillow_cannot_convert_is_unsupported():
    """No reader produces La (premultiplied gray + alpha), and Pillow cannot convert it."""
    with pytest.raises(ImageDecodeError) as info:
        imaging._to_rgb(Image.new("La", (2, 2)))
    assert info.value.reason == "unsupported"


# Errors and their reasons


def test_reasons_are_stable():
    assert REASONS == ("empty", "not_an_image", "truncated", "corrupt", "zero_size", "too_large", "unsupported")


def test_error_type_carries_reason_and_pickles():
    error = ImageDecodeError("corrupt", "bad IDAT")
    assert isinstance(error, ValueError)
    assert (error.reason, error.message) == ("corrupt", "bad IDAT")
    assert "bad IDAT" in str(error) and "corrupt" in str(error)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.reason, clone.message) == ("corrupt", "bad IDAT")
    with pytest.raises(ValueError):
        ImageDecodeError("weird", "x")


@pytest.mark.parametrize("data", [b"", None, bytearray()])
def test_empty(data):
    assert reason_of(data).reason == "empty"


@pytest.mark.parametrize(
    "data",
    [
        b"hello world",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        np.random.default_rng(3).bytes(4096),
        b"\x00",
    ],
)
def test_not_an_image(data):
    assert reason_of(data).reason == "not_an_image"


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_other_pillow_formats_are_unsupported(fmt):
    data = encode(solid(), fmt)
    error = reason_of(data)
    assert error.reason == "unsupported"
    assert fmt in error.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_cut_in_half_is_truncated(fmt):
    pixels = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), fmt)
    error = reason_of(data[: len(data) // 2])
    assert error.reason == "truncated", error


def test_header_cut_short_is_truncated():
    assert reason_of(noisy_png()[:30]).reason == "truncated"


def test_damaged_idat_is_corrupt_or_truncated():
    data = bytearray(noisy_png())
    start = data.index(b"IDAT") + 4
    data[start + 100 : start + 400] = bytes(300)
    error = reason_of(bytes(data))
    assert error.reason in ("corrupt", "truncated")
    assert type(error.__cause__).__name__ in error.message
    assert str(error.__cause__) in error.message


def test_png_zero_width():
    """Pillow 12 refuses a zero width in the header (PNG, BMP, GIF, TIFF, JPEG alike)."""
    error = reason_of(patch_png_size(encode(solid(), "PNG"), 0, 16))
    assert error.reason in ("zero_size", "corrupt")


def test_zero_size_image_from_pillow_is_zero_size(monkeypatch):
    monkeypatch.setattr(Image, "open", lambda fp, formats=None: Image.new("RGB", (0, 4)))
    assert reason_of(encode(solid(), "PNG")).reason == "zero_size"


@pytest.mark.parametrize("pillow_limit", ["default", None])
def test_huge_png_header_is_refused_quickly(monkeypatch, pillow_limit):
    if pillow_limit is None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # our limit must still hold
    data = patch_png_size(encode(solid(), "PNG"), 100_000, 100_000)
    started = time.perf_counter()
    assert reason_of(data).reason == "too_large"
    assert time.perf_counter() - started < 1.0


def test_huge_bmp_header_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    data = bytearray(encode(solid(), "BMP"))
    data[18:26] = struct.pack("<ii", 100_000, 100_000)
    assert reason_of(bytes(data)).reason == "too_large"


def test_max_pixels_is_checked():
    data = encode(solid(size=(4, 3)), "PNG")
    assert reason_of(data, max_pixels=10).reason == "too_large"
    assert decode_image(data, max_pixels=12).shape == (3, 4, 3)


@pytest.mark.parametrize("size", [(15, 10), (20, 20)])  # Pillow's warning, then its error
def test_pillow_bomb_check_maps_to_too_large(monkeypatch, size):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert reason_of(encode(solid(size=size), "PNG")).reason == "too_large"


def test_default_max_pixels():
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_load_truncated_images_flag_is_refused(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(encode(solid(), "PNG"))


def test_damaged_bytes_raise_only_decode_errors():
    rng = np.random.default_rng(11)
    for data in (noisy_png(), encode(solid(), "JPEG"), encode(solid(), "GIF"), encode(solid(), "TIFF")):
        for _ in range(40):
            damaged = bytearray(data)
            for at in rng.integers(0, len(data), 6):
                damaged[at] = rng.integers(0, 256)
            try:
                pixels = decode_image(bytes(damaged))
            except ImageDecodeError as error:
                assert error.reason in REASONS
            else:
                assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


def test_global_pillow_state_is_untouched():
    max_pixels, load_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    filters = list(warnings.filters)
    decode_image(encode(solid(), "JPEG"))
    for bad in (b"", b"junk", noisy_png()[:500], patch_png_size(encode(solid(), "PNG"), 100_000, 100_000)):
        with pytest.raises(ImageDecodeError):
            decode_image(bad)
    sniff_format(b"junk")
    assert Image.MAX_IMAGE_PIXELS == max_pixels
    assert ImageFile.LOAD_TRUNCATED_IMAGES == load_truncated
    assert warnings.filters == filters


# Hash and sniffing


def test_content_hash():
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = encode(solid(), "PNG")
    assert content_hash(data) == content_hash(bytes(data)) == hashlib.sha256(data).hexdigest()
    assert content_hash(data) != content_hash(data + b"\x00")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO"])
def test_sniff_format(fmt):
    assert sniff_format(encode(solid(), fmt)) == fmt


@pytest.mark.parametrize("data", [b"", None, b"hello world", b"\x89PNG\r\n\x1a\n"])
def test_sniff_format_none(data):
    assert sniff_format(data) is None


def test_sniff_format_reads_only_the_header():
    huge = patch_png_size(encode(solid(), "PNG"), 10_000, 10_000)  # 300 MB if decoded
    started = time.perf_counter()
    assert sniff_format(huge) == "PNG"
    assert time.perf_counter() - started < 0.5


# Reduced-scale JPEG decoding (min_side)


def textured(width: int, height: int) -> Image.Image:
    low = np.random.default_rng(3).integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return Image.fromarray(low).resize((width, height), Image.BICUBIC)


def test_min_side_decodes_a_jpeg_at_a_reduced_scale_close_to_the_full_decode():
    data = encode(textured(1600, 1200), "JPEG", quality=92)
    full = decode_image(data)
    small = decode_image(data, min_side=300)  # 1200 // 300 = 4: a quarter of each side
    assert full.shape == (1200, 1600, 3) and small.shape == (300, 400, 3)
    assert small.dtype == np.uint8 and small.flags.c_contiguous
    reference = np.asarray(Image.fromarray(full).reduce(4), np.int16)
    assert np.abs(small.astype(np.int16) - reference).mean() < 2.0
    assert decode_image(data, min_side=500).shape == (600, 800, 3)  # 1200 // 500 = 2: half each side
    assert decode_image(data, min_side=700).shape == full.shape  # 1200 // 700 = 1
    assert decode_image(data, min_side=1200).shape == full.shape and decode_image(data, min_side=5000).shape == full.shape


@pytest.mark.parametrize("orientation, red_at", [(6, (2, 36)), (8, (76, 2)), (3, (36, 76)), (1, (2, 2))])
def test_min_side_keeps_exif_orientation(orientation, red_at):
    image = textured(320, 160)
    image.paste((255, 0, 0), (0, 0, 32, 32))  # the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = decode_image(encode(image, "JPEG", exif=exif, quality=95), min_side=40)  # 160 // 40: a quarter
    assert pixels.shape == ((40, 80, 3) if orientation in (1, 3) else (80, 40, 3))
    assert pixels[red_at].tolist() == pytest.approx([255, 0, 0], abs=30)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_min_side_leaves_other_formats_at_full_size(fmt):
    data = encode(textured(640, 480), fmt)
    assert np.array_equal(decode_image(data, min_side=100), decode_image(data))


def test_min_side_still_checks_max_pixels_on_the_full_size():
    data = encode(textured(1600, 1200), "JPEG")
    assert reason_of(data, max_pixels=1_000_000, min_side=100).reason == imaging.TOO_LARGE


def test_decode_side_keeps_twice_the_resized_region():
    from brandlens.preprocess import decode_side, default_crop_fraction

    assert decode_side(260, default_crop_fraction(260)) == 584  # 2 x 260 / (260 / 292)
    assert decode_side(224, 1.0) == 448 and decode_side(224, 1.0, grid=2) == 896
    assert decode_side(224, 1.0, keep_fraction=0.75) == 598
