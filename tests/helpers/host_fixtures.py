"""A LoRA folder and a small WebUI-named model for host tests: files written in code, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_lorastack.formats.hashes import HashCache
from lib_lorastack.formats.targets import Family
from lib_lorastack.host import ModelHandle, StackOptions, StackSession
from lib_lorastack.stack import LoraCatalog
from tests.helpers.engine_fixtures import small_model, subset_targets
from tests.helpers.lora_writers import kohya_lora

F = Family.SD1


def write_lora(folder: Path, name: str, targets, *, seed: int, rank: int = 4, alias: str | None = None, family=F) -> Path:
    sd = kohya_lora(family, targets, rank=rank, alpha=rank / 2, seed=seed)
    meta = {"ss_output_name": alias} if alias else {"ss_network_dim": str(rank)}
    path = folder / f"{name}.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)
    return path


def lora_folder(root: Path) -> Path:
    folder = root / "Lora"
    targets = subset_targets(F)
    write_lora(folder, "char", targets[::2], seed=1)
    write_lora(folder, "style", targets[1::2], seed=2, alias="Watercolor")
    write_lora(folder, "detail", targets[::3], seed=3)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    xl = [t for t in subset_targets(Family.SDXL, ("input_blocks.4.1.transformer_blocks.0.attn2.to_k",))]
    write_lora(folder, "xl_only", xl, seed=4, family=Family.SDXL)
    return folder


class Options:
    """Mutable stand-in for the WebUI's settings."""

    def __init__(self, **kw) -> None:
        self.value = StackOptions(**kw)

    def __call__(self) -> StackOptions:
        return self.value


def make_session(folder: Path, options: Options | None = None) -> tuple[StackSession, Options]:
    catalog = LoraCatalog(folder)
    hashes = HashCache()
    options = options or Options(mode="fused")
    session = StackSession(catalog=lambda: catalog, options=options, short_hash=lambda e: hashes.get(e.path).short)
    return session, options


def model_handle(dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, ModelHandle]:
    model, modules = small_model(F, dtype=dtype)
    return model, ModelHandle(object(), F, modules, "small")
