"""A LoRA file on disk: checked safetensors header, metadata, lazy tensors (memory-mapped, read on demand)."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CorruptFileError, NotSafetensorsError

PICKLE_EXTENSIONS = {".pt", ".ckpt", ".pth", ".bin", ".pkl"}
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class LoraFile:
    """Open and check a ``.safetensors`` file. Tensors are read lazily through safetensors' memory map."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle = None
        if self.path.suffix.lower() in PICKLE_EXTENSIONS:
            raise NotSafetensorsError(
                self.path, f"{self.path.suffix} files are pickled and can run code; only .safetensors is read"
            )
        try:
            stat = self.path.stat()
            with open(self.path, "rb") as f:
                head = f.read(8)
                self.size = stat.st_size
                self.mtime_ns = stat.st_mtime_ns
                self.header = self._read_header(f, head)
        except OSError as e:
            raise CorruptFileError(self.path, f"cannot be read: {e.strerror or e}") from e
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (self.header.pop("__metadata__", None) or {}).items()}
        self.shapes: dict[str, tuple[int, ...]] = {k: tuple(v["shape"]) for k, v in self.header.items()}
        self.dtypes: dict[str, str] = {k: v["dtype"] for k, v in self.header.items()}

    def _read_header(self, f, head: bytes) -> dict:
        looks_pickled = head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
        if looks_pickled and not self._plausible_header(f, head):
            raise NotSafetensorsError(self.path, "is a pickled/zip PyTorch file, not safetensors; it is never unpickled")
        if len(head) < 8:
            raise CorruptFileError(self.path, f"is {len(head)} bytes long, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        self.header_size = n
        if n > self.size - 8 or n > _MAX_HEADER:
            raise CorruptFileError(
                self.path, f"header claims {n} bytes but the file has {self.size - 8} after its length field (truncated?)"
            )
        raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(self.path, f"header is not valid JSON ({e})") from e
        if not isinstance(header, dict):
            raise CorruptFileError(self.path, "header is not a JSON object")
        data_size = self.size - 8 - n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            except (TypeError, KeyError, ValueError) as e:
                raise CorruptFileError(self.path, f"tensor {key!r} has a malformed header entry") from e
            if dtype not in _DTYPE_SIZES:
                raise CorruptFileError(self.path, f"tensor {key!r} has unknown dtype {dtype!r}")
            if end > data_size:
                raise CorruptFileError(
                    self.path, f"tensor {key!r} ends at byte {end} of the data but the file holds {data_size} (truncated)"
                )
            if not 0 <= begin <= end or (end - begin) != _numel(shape) * _DTYPE_SIZES[dtype]:
                raise CorruptFileError(self.path, f"tensor {key!r}: its byte range does not match shape {shape} {dtype}")
        return header

    def _plausible_header(self, f, head: bytes) -> bool:
        if len(head) < 8:
            return False
        (n,) = struct.unpack("<Q", head)
        if n > self.size - 8:
            return False
        first = f.read(1)
        f.seek(8)
        return first == b"{"

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    def tensor(self, key: str) -> torch.Tensor:
        """Read one tensor (CPU, the file's dtype)."""
        if self._handle is None:
            try:
                self._handle = safe_open(str(self.path), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise CorruptFileError(self.path, f"safetensors cannot open it: {e}") from e
        return self._handle.get_tensor(key)

    def close(self) -> None:
        self._handle = None

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def alias(self) -> str:
        """The name the WebUI also accepts: ``ss_output_name`` from the metadata, else the file's stem."""
        return self.metadata.get("ss_output_name") or self.stem

    def trigger_words(self, top: int = 10) -> list[str]:
        """The most frequent training tags (``ss_tag_frequency``), most frequent first."""
        return trigger_words(self.metadata, top)


def trigger_words(metadata: dict[str, str], top: int = 10) -> list[str]:
    """The most frequent training tags in a LoRA's metadata (``ss_tag_frequency``), most frequent first."""
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        return []
    try:
        by_dir = json.loads(raw)
    except json.JSONDecodeError:
        return []
    counts: Counter[str] = Counter()
    if isinstance(by_dir, dict):
        for tags in by_dir.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, int | float):
                        counts[str(tag).strip()] += int(n)
    return [t for t, _ in counts.most_common(top) if t]
