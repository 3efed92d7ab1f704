"""Stack → checkpoint: the fused weights written as a new ``.safetensors`` model.

Each changed parameter gets the patch engine's fused value (W0 + Σ s·ΔW in fp32, then the multiplicative adapters
in stack order, rounded once to the parameter's dtype), under the checkpoint's own key
(module name + ``.weight``, ``.in_proj_weight``, ``.bias``). Every other tensor is copied byte for byte, and so is the
header layout (same dtypes and shapes, same offsets); the metadata gains the recipe. The base file is only read;
the result goes to a temporary file that is renamed into place, never over the input.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine import PatchEngine
from ..formats.targets import Family, Target
from .basefile import BaseCheckpoint, CheckpointError
from .output import check_output, source_record, temp_path
from .progress import ProgressFn, no_progress
from .stack import StackItem

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    **({"F8_E4M3": torch.float8_e4m3fn} if hasattr(torch, "float8_e4m3fn") else {}),
    **({"F8_E5M2": torch.float8_e5m2} if hasattr(torch, "float8_e5m2") else {}),
}  # fmt: skip
_CHUNK = 16 << 20


@dataclass
class CheckpointBake:
    path: Path
    changed: list[str]  # checkpoint keys written with new values
    copied: int  # tensors copied unchanged
    notes: list[str] = field(default_factory=list)


def _raw_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1)
    buf = bytearray(flat.numel() * flat.element_size())
    if buf:
        torch.frombuffer(buf, dtype=flat.dtype).copy_(flat)
    return bytes(buf)


def fused_values(
    items: Sequence[StackItem], base: BaseCheckpoint, *, compute_dtype: torch.dtype = torch.float32, progress: ProgressFn = no_progress
) -> dict[str, torch.Tensor]:
    """Checkpoint key → new value (in the checkpoint's dtype) for every parameter the stack changes: the patch
    engine itself applies the stack to the touched layers, built from the checkpoint's tensors, so a baked
    checkpoint has the very weights the WebUI would patch in."""
    needed: dict[str, set[str]] = defaultdict(set)
    for item in items:
        for target in item.lora.modules:
            if item.strength_for(target) == 0.0:
                continue
            fault = base.fault(target)
            if fault:
                raise CheckpointError(base.path, fault)
            needed[target.module].add(target.param)
    modules: dict[str, torch.nn.Module] = {}
    for name, params in needed.items():
        module = torch.nn.Module()
        for param in params:
            module.register_parameter(param, torch.nn.Parameter(base.tensor(base.key(Target(name, param))).clone(), requires_grad=False))
        bias_name = "in_proj_bias" if "in_proj_weight" in params else "bias"
        bias_key = base.key(Target(name, bias_name))
        if bias_key in base.file.shapes:
            module.register_parameter(bias_name, torch.nn.Parameter(base.tensor(bias_key).clone(), requires_grad=False))
        else:
            setattr(module, bias_name, None)
        modules[name] = module
    engine = PatchEngine(modules, backup_device="cpu", compute_dtype=compute_dtype)
    progress(0, 1, "fuse")
    engine.apply([item.layer for item in items])
    created = engine.created_biases()
    if created:
        raise CheckpointError(base.path, f"a LoRA changes the bias of {sorted(created)[0]!r}, which the checkpoint lacks")
    out = {base.key(Target(module, param)): getattr(modules[module], param).detach() for module, param in engine.written()}
    progress(1, 1, "fuse")
    return out


def bake_checkpoint(
    items: Sequence[StackItem],
    base: BaseCheckpoint,
    out_path: str | Path,
    *,
    family: Family | str | None = None,
    force: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    progress: ProgressFn = no_progress,
) -> CheckpointBake:
    """Write ``base`` with the stack fused in to ``out_path`` (a new file)."""
    family = Family(family or items[0].lora.family)
    if base.family != family:
        raise CheckpointError(base.path, f"is an {base.family.value.upper()} model; the stack is {family.value.upper()}")
    out = check_output(out_path, [base.path, *(it.path for it in items if it.path)], force=force)
    values = fused_values(items, base, compute_dtype=compute_dtype, progress=progress)
    header = {k: dict(v) for k, v in base.file.header.items()}
    for key, value in values.items():
        entry = header[key]
        if _DTYPES.get(entry["dtype"]) != value.dtype or list(value.shape) != list(entry["shape"]):
            raise CheckpointError(base.path, f"tensor {key!r}: cannot write {value.dtype} {tuple(value.shape)} in its place")
    metadata = dict(base.metadata)
    metadata["lorastack_recipe"] = json.dumps(
        {
            "tool": "lib_lorastack bake --method checkpoint",
            "base": base.path.name,
            "sources": [source_record(it, family) for it in items],
            "changed": len(values),
        }
    )
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    order = sorted(base.file.header, key=lambda k: base.file.header[k]["data_offsets"][0])
    data_start = 8 + base.file.header_size
    tmp = temp_path(out)
    try:
        with open(base.path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(len(text).to_bytes(8, "little"))
            dst.write(text)
            position = 0
            for done, key in enumerate(order, 1):
                begin, end = base.file.header[key]["data_offsets"]
                if begin > position:  # keep any gap exactly as it was
                    src.seek(data_start + position)
                    dst.write(src.read(begin - position))
                if key in values:
                    dst.write(_raw_bytes(values[key]))
                else:
                    src.seek(data_start + begin)
                    remaining = end - begin
                    while remaining:
                        chunk = src.read(min(_CHUNK, remaining))
                        if not chunk:
                            raise CheckpointError(base.path, f"ended inside tensor {key!r}")
                        dst.write(chunk)
                        remaining -= len(chunk)
                position = end
                progress(done, len(order), "write")
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return CheckpointBake(out, sorted(values), len(order) - len(values))
