"""The heatmap PNG decodes (zlib, chunk CRCs, IHDR, filter bytes, pixel rows), has the expected size, and shows
the values it is given."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

from lib_lorastack.doctor.font import HEIGHT, draw_text, text_width
from lib_lorastack.doctor.heatmap import CELL_H, CELL_W, Panel, doctor_panels, heatmap_png, render
from lib_lorastack.doctor.metrics import measure
from lib_lorastack.doctor.png import encode_png
from lib_lorastack.doctor.stack import stack_item
from tests.helpers.doctor_fixtures import FAMILY, correlated, doctor_targets, factors, lora


def decode(data: bytes) -> torch.Tensor:
    """A minimal PNG reader for 8-bit RGB, filter 0 (what encode_png writes), checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    rows = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(height, 1 + 3 * width)
    assert torch.all(rows[:, 0] == 0)  # filter type 0 on every row
    return rows[:, 1:].reshape(height, width, 3)


def test_encode_png_round_trips_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (7, 11, 3), generator=g, dtype=torch.uint8)
    assert torch.equal(decode(encode_png(image, text={"Title": "x"})), image)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.float())


def test_heatmap_has_the_expected_size_and_cells(tmp_path) -> None:
    targets = doctor_targets()
    fa = factors(targets, rank=4, seed=1)
    items = [stack_item(lora("char", fa), 1.0), stack_item(lora("style", correlated(fa, seed=2, mix=0.9)), 1.0)]
    m = measure(items, FAMILY)
    data = heatmap_png(m)
    image = decode(data)
    panels, columns = doctor_panels(m)
    assert columns == ["BASE", "IN01", "IN04", "OUT03"]
    assert panels[0].rows == ["#1 char", "#2 style", "STACK"]
    assert torch.equal(image, render(panels, columns, "LORASTACK DOCTOR - SD1 - 2 LORAS", ["#1 = char", "#2 = style"]))
    assert image.shape[1] >= len(columns) * CELL_W and image.shape[0] >= sum(len(p.rows) for p in panels) * CELL_H
    assert (image < 50).all(-1).any() and (image == 255).all(-1).any()  # ink and paper
    from PIL import Image  # second, independent decoder (test venv only)

    path = tmp_path / "h.png"
    path.write_bytes(data)
    with Image.open(path) as im:
        assert im.size == (image.shape[1], image.shape[0]) and im.mode == "RGB"
        assert torch.equal(torch.tensor(list(im.getdata()), dtype=torch.uint8).reshape(image.shape), image)


def test_cells_are_coloured_by_value_and_labelled() -> None:
    panel = Panel("T", ["LOW", "HIGH"], [[0.0, float("nan")], [1.0, 0.5]], vmax=1.0)
    image = render([panel], ["A", "B"], "X")
    ys = [y for y in range(image.shape[0]) if (image[y] == torch.tensor([120, 0, 30], dtype=torch.uint8)).all(-1).any()]
    assert ys, "the value 1.0 is drawn in the darkest colour"
    canvas = torch.full((HEIGHT, text_width("AB"), 3), 255, dtype=torch.uint8)
    draw_text(canvas, 0, 0, "AB", (0, 0, 0))
    assert (canvas == 0).all(-1).sum() > 20  # glyphs have ink
