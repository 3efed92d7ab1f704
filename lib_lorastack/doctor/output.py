"""Writing results safely: never over an input, never over an existing file unless asked, always to a temporary
file that is renamed into place; and the metadata that records how a file was made."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from ..errors import LoraStackError
from ..formats.files import trigger_words
from ..formats.hashes import file_hashes
from ..formats.targets import Family
from ..syntax import format_entry
from ..syntax.blocks import FULL_LAYOUT, slot_space
from .stack import StackItem

BASE_MODEL_VERSION = {Family.SD1: "sd_v1", Family.SD2: "sd_v2", Family.SDXL: "sdxl_base_v1-0", Family.FLUX: "flux1"}
ARCHITECTURE = {
    Family.SD1: "stable-diffusion-v1/lora",
    Family.SD2: "stable-diffusion-v2-768-v/lora",
    Family.SDXL: "stable-diffusion-xl-v1-base/lora",
    Family.FLUX: "flux-1-dev/lora",  # sd-scripts' sai_model_spec (dev and schnell LoRAs are interchangeable)
}
NETWORK_MODULE = {Family.FLUX: "networks.lora_flux"}  # sd-scripts' module name; "networks.lora" for SD


class OutputError(LoraStackError):
    """The output cannot be written where asked (it would overwrite an input or an existing file)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str | Path, inputs: Iterable[str | Path], *, force: bool = False) -> Path:
    """The output path, after refusing an input file (always) and an existing file (unless ``force``)."""
    out = Path(path)
    if out.suffix.lower() != ".safetensors":
        raise OutputError(f"output {out}: the name must end in .safetensors")
    for p in inputs:
        if p and _same_file(out, Path(p)):
            raise OutputError(f"output {out} is one of the inputs ({p}); choose another name, the input is never overwritten")
    if out.exists() and not force:
        raise OutputError(f"output {out} exists; choose another name or pass --force to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"output {out}: folder {out.parent} does not exist")
    return out


def temp_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the safetensors data section of these tensors: the WebUI's LoRA hash (``sshs_model_hash``) of
    the file they are saved in, whatever its metadata."""
    raw = save(tensors)
    (n,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + n :]).hexdigest()


def write_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Save atomically, with ``sshs_model_hash`` set to the file's own LoRA hash."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {**metadata, "sshs_model_hash": tensors_hash(tensors)}
    tmp = temp_path(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def source_record(item: StackItem, family: Family) -> dict:
    """What the recipe keeps about one source LoRA."""
    e = item.entry
    rec: dict = {"name": item.name, "tag": format_entry(e), "te": e.te, "unet": e.unet}
    if item.path:
        rec["file"] = Path(item.path).name
        try:
            h = file_hashes(item.path)
            rec["sha256"], rec["addnet"] = h.sha256, h.addnet
        except OSError:
            pass
    if item.lora.metadata.get("sshs_model_hash"):
        rec["sshs_model_hash"] = item.lora.metadata["sshs_model_hash"]
    if item.block_weights is not None:
        rec["lbw"] = e.lbw
        rec["lbwe"] = e.lbwe
        ids = slot_space(family)
        rec["block_vector"] = {b: item.slots[ids.index(b)] for b in FULL_LAYOUT[family]}
    if e.start is not None or e.stop is not None:
        rec["start"], rec["stop"] = e.start, e.stop
    return rec


def lora_metadata(
    items: list[StackItem], family: Family, out: Path, ranks: set[int], recipe: dict
) -> dict[str, str]:
    """kohya-style metadata for a baked or merged LoRA, with the recipe (sources, hashes, strengths, vectors)."""
    dim = str(next(iter(ranks))) if len(ranks) == 1 else "Dynamic"
    tags: dict[str, dict] = {}
    for it in items:
        try:
            by_dir = json.loads(it.lora.metadata.get("ss_tag_frequency") or "{}")
        except json.JSONDecodeError:
            by_dir = {}
        if isinstance(by_dir, dict):
            for d, counts in by_dir.items():
                tags[f"{it.name}/{d}"] = counts
    meta = {
        "ss_network_module": NETWORK_MODULE.get(family, "networks.lora"),
        "ss_network_dim": dim,
        "ss_network_alpha": dim,
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": str(family is Family.SD2),
        "ss_output_name": out.stem,
        "modelspec.architecture": ARCHITECTURE[family],
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": out.stem,
        "modelspec.merged_from": ", ".join(it.name for it in items),
        "lorastack_recipe": json.dumps({**recipe, "sources": [source_record(it, family) for it in items]}),
    }
    if tags:
        meta["ss_tag_frequency"] = json.dumps(tags)
    triggers = sorted({t for it in items for t in trigger_words(it.lora.metadata, 3)})
    if triggers:
        meta["modelspec.trigger_phrase"] = ", ".join(triggers)
    return meta
