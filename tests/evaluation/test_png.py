"""The numpy+zlib PNG writer round-trips through an independent decoder."""

import struct
import zlib

import numpy as np
import pytest

from bbg_jax.evaluation import png


def _decode(data: bytes) -> tuple[tuple[int, int, int], bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return header, zlib.decompress(idat)


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 6, 1), (3, 2)])
def test_png_round_trip(shape):
    img = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    header, raw = _decode(png.encode_png(img))
    w, h, depth, color = header[:4]
    channels = 3 if color == 2 else 1
    assert (h, w, depth) == (shape[0], shape[1], 8)
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * channels)
    assert not rows[:, 0].any()  # filter type 0
    np.testing.assert_array_equal(rows[:, 1:].reshape(img.shape), img)


def test_pil_reads_it_when_available(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    img = np.random.default_rng(1).integers(0, 256, (9, 4, 3)).astype(np.uint8)
    path = tmp_path / "x.png"
    png.write_png(str(path), img)
    np.testing.assert_array_equal(np.asarray(image_mod.open(path)), img)


def test_grid_and_to_uint8():
    images = np.stack([np.full((2, 2, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    sheet = png.grid(png.to_uint8(images), rows=2, pad=1)
    assert sheet.shape == (2 * 3 + 1, 2 * 3 + 1, 1)
    assert sheet[1, 1, 0] == 0 and sheet[1, 4, 0] == 128 and sheet[4, 1, 0] == 255
    assert sheet[4, 4, 0] == 0  # the empty cell stays black
