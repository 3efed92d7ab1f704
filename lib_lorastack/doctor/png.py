"""A minimal PNG encoder (8-bit RGB, no interlace) with zlib and struct only: no imaging library needed."""

from __future__ import annotations

import struct
import zlib

import torch

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: torch.Tensor, *, text: dict[str, str] | None = None) -> bytes:
    """``pixels``: uint8 tensor ``[height, width, 3]`` → the bytes of a PNG file. ``text``: tEXt chunks (Latin-1)."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be uint8 [height, width, 3], not {pixels.dtype} {tuple(pixels.shape)}")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height < 1 or width < 1:
        raise ValueError("an image needs at least one pixel")
    rows = torch.zeros(height, 1 + width * 3, dtype=torch.uint8)  # each row: filter type 0, then RGB bytes
    rows[:, 1:] = pixels.cpu().reshape(height, width * 3)
    raw = bytearray(rows.numel())
    torch.frombuffer(raw, dtype=torch.uint8).copy_(rows.reshape(-1))
    out = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_chunk(b"tEXt", key.encode("latin-1", "replace")[:79] + b"\0" + value.encode("latin-1", "replace")))
    out.append(_chunk(b"IDAT", zlib.compress(bytes(raw), 9)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)
