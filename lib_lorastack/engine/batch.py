"""One apply's fused writes, ready to run: in an order that groups weights sharing a split product, with every
weight's scale values in one host tensor (one transfer per apply), and the split operands prepared a bounded chunk
at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from .fused import SPLIT, SPLIT_PARTS, WeightProgram, prepare_split
from .plan import ParamKey, ParamPlan

CHUNK_BYTES = 256 << 20  # scratch for one chunk of split operands (fp32 scaled rows + their half parts)


class Write(NamedTuple):
    key: ParamKey
    plan: ParamPlan
    param: torch.Tensor
    program: WeightProgram
    path: str


class WriteBatch:
    def __init__(self, writes: Sequence[Write], compute_dtype: torch.dtype) -> None:
        split = [w for w in writes if w.path == SPLIT]
        split.sort(key=lambda w: (str(w.param.device), w.program.out_features, str(w.program.half_dtype)))
        self.writes: list[Write] = split + [w for w in writes if w.path != SPLIT]
        values: list[float] = []
        repeats: list[int] = []
        self.offsets: dict[ParamKey, int] = {}
        position = 0
        for w in self.writes:
            if w.program.up_t is None:
                continue
            self.offsets[w.key] = position
            values += w.program.scale_values(w.plan.strengths, w.path)
            repeats += w.program.ranks
            position += w.program.rank
        # after every per-rank value: one strength per ``rest`` contribution (adapters computed in full), same order
        self.rest_offsets: dict[ParamKey, int] = {}
        for w in self.writes:
            if w.program.rest:
                self.rest_offsets[w.key] = position
                values += w.program.rest_values(w.plan.strengths)
                repeats += [1] * len(w.program.rest)
                position += len(w.program.rest)
        self.host_scale = torch.repeat_interleave(torch.tensor(values, dtype=compute_dtype), torch.tensor(repeats, dtype=torch.long))
        self._chunks = self._plan_chunks(split)

    @staticmethod
    def _plan_chunks(split: list[Write]) -> dict[ParamKey, list[Write]]:
        """First key of each chunk → the chunk's writes (consecutive, same device, width and dtype)."""
        chunks: dict[ParamKey, list[Write]] = {}
        current: list[Write] = []
        size = 0
        for w in split:
            p = w.program
            nbytes = p.rank * p.out_features * (4 + 2 * SPLIT_PARTS[p.half_dtype])  # type: ignore[index]
            same = current and (current[0].param.device, current[0].program.out_features, current[0].program.half_dtype) == (
                w.param.device, p.out_features, p.half_dtype)
            if current and (not same or size + nbytes > CHUNK_BYTES):
                chunks[current[0].key] = current
                current, size = [], 0
            current.append(w)
            size += nbytes
        if current:
            chunks[current[0].key] = current
        return chunks

    def device_scales(self) -> dict[torch.device, torch.Tensor]:
        out = {}
        for device in {w.param.device for w in self.writes}:
            if device.type == "cpu":
                out[device] = self.host_scale
            else:
                staged = self.host_scale.pin_memory() if self.host_scale.numel() else self.host_scale
                out[device] = staged.to(device, non_blocking=True)
        return out

    def operands(self, scales: dict[torch.device, torch.Tensor]) -> Iterator[tuple[Write, torch.Tensor | None, torch.Tensor | None]]:
        """Each write with its operand (the split operand, prepared with its chunk, or its scale vector) and the
        strengths of its ``rest`` contributions (a view of the same device buffer)."""
        for w, operand in self._operands(scales):
            start = self.rest_offsets.get(w.key)
            rest = None if start is None else scales[w.param.device][start : start + len(w.program.rest)]
            yield w, operand, rest

    def _operands(self, scales: dict[torch.device, torch.Tensor]) -> Iterator[tuple[Write, torch.Tensor | None]]:
        ready: dict[ParamKey, torch.Tensor] = {}
        for w in self.writes:
            if w.program.up_t is None:
                yield w, None
                continue
            scale = scales[w.param.device]
            chunk = self._chunks.get(w.key)
            if chunk is not None:
                start = self.offsets[chunk[0].key]
                stop = self.offsets[chunk[-1].key] + chunk[-1].program.rank
                prepared = prepare_split([c.program for c in chunk], scale[start:stop], chunk[0].program.half_dtype)  # type: ignore[arg-type]
                ready = dict(zip((c.key for c in chunk), prepared))
            if w.path == SPLIT:
                yield w, ready.pop(w.key)
            else:
                start = self.offsets[w.key]
                yield w, scale[start : start + w.program.rank]


@contextlib.contextmanager
def exact_half_products() -> Iterator[None]:
    """Half-precision GEMMs accumulate in fp32 all the way (no reduced-precision split-K reductions)."""
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction)
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction = saved
