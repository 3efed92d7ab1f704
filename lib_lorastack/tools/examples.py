"""The built-in example LoRAs for SD1.5, generated in code on first use (seeded: same bytes every time)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save

from ..errors import LoraFileError
from ..formats.files import LoraFile
from ..formats.targets import Family, Target
from ..formats.writers import kohya_key, kohya_lora, random_lora_factors, target_shape, targetable

FAMILY = Family.SD1
NAMES = ("example_character", "example_style", "example_detail")
VERSION = "2"  # bump when the generated contents change: older files are rewritten


def default_dir() -> Path:
    env = os.environ.get("LORASTACK_EXAMPLES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lorastack" / "examples"


def _meta(name: str, module: str, dim: int, alpha: float, tags: dict[str, int]) -> dict[str, str]:
    return {
        "ss_output_name": name,
        "ss_network_module": module,
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
        "ss_tag_frequency": json.dumps({"10_train": tags}),
        "lorastack_example": VERSION,
    }


def _character() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    targets = [
        t for t in targetable(FAMILY) if any(s in t.module for s in (".attn1.", ".attn2.", "self_attn."))
    ]
    sd = kohya_lora(FAMILY, targets, rank=8, alpha=4.0, seed=11, dtype=torch.float16, std=0.05)
    tags = {"lsx_girl": 120, "red scarf": 80, "green eyes": 64, "smile": 20, "outdoors": 9}
    return sd, _meta("example_character", "networks.lora", 8, 4.0, tags)


def _style() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LoCon: attention, feed-forward, projections and the 3×3 convs of the up path, with per-module alpha
    (rank 8; 4 on the convs and feed-forward)."""
    keep = (".attn1.", ".attn2.", ".ff.net.", ".proj_in", ".proj_out", "output_blocks")
    targets = [t for t in targetable(FAMILY) if t.module.startswith("model.") and any(k in t.module for k in keep)]
    g = torch.Generator().manual_seed(22)
    sd: dict[str, torch.Tensor] = {}
    for i, t in enumerate(targets):
        shape = target_shape(t, FAMILY)
        rank = 4 if (len(shape) == 4 and shape[2] > 1) or ".ff.net." in t.module else 8  # keeps the file under 10 MB
        up, down = random_lora_factors(shape, rank, g, std=0.05)
        key = kohya_key(t, FAMILY)
        sd[f"{key}.lora_up.weight"] = up.half()
        sd[f"{key}.lora_down.weight"] = down.half()
        sd[f"{key}.alpha"] = torch.tensor(float(2 + i % 7))
    return sd, _meta("example_style", "lycoris.kohya", 8, 4.0, {"watercolor": 50, "ink outline": 31})


def _detail() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LyCORIS LoHa on the attention of the middle and output blocks."""
    targets: list[Target] = [
        t for t in targetable(FAMILY) if (".middle_block." in t.module or ".output_blocks." in t.module) and ".attn" in t.module
    ]
    g = torch.Generator().manual_seed(33)
    sd: dict[str, torch.Tensor] = {}
    rank = 4
    for t in targets:
        out, fan_in = target_shape(t, FAMILY)[:2]
        key = kohya_key(t, FAMILY)
        for i in (1, 2):
            sd[f"{key}.hada_w{i}_a"] = (torch.randn(out, rank, generator=g) * 0.1).half()
            sd[f"{key}.hada_w{i}_b"] = (torch.randn(rank, fan_in, generator=g) * 0.1).half()
        sd[f"{key}.alpha"] = torch.tensor(2.0)
    return sd, _meta("example_detail", "lycoris.kohya", rank, 2.0, {"intricate details": 40, "sharp": 12})


_BUILDERS = {"example_character": _character, "example_style": _style, "example_detail": _detail}


def _current(path: Path) -> bool:
    try:
        return LoraFile(path).metadata.get("lorastack_example") == VERSION
    except LoraFileError:
        return False


def _deterministic_bytes(sd: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """safetensors' bytes with the metadata in sorted order (safetensors itself orders it at random)."""
    raw = save({k: v.contiguous() for k, v in sd.items()}, metadata=meta)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(text) <= n  # same content, other order: never longer than the original
    return raw[:8] + text.ljust(n, b" ") + raw[8 + n :]


def ensure_examples(directory: str | Path | None = None) -> list[Path]:
    """Write the example files unless they are there already; their paths."""
    folder = Path(directory) if directory else default_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in _BUILDERS.items():
        path = folder / f"{name}.safetensors"
        if not _current(path):
            sd, meta = build()
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(_deterministic_bytes(sd, meta))
            os.replace(tmp, path)
        paths.append(path)
    return paths
