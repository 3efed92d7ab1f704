"""Neo's backend/memory_management.py, as far as LoRAs see it: a patcher is loaded when it is not the one loaded for
its model or its patches changed (``patches_uuid``): the old patches come off, every parameter moves to new storage
(a device copy), the new patches are merged."""

import torch

current_loaded_models: list = []
moves = {"count": 0}


def _move(model):
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    moves["count"] += 1


def load_models_gpu(patchers):
    for patcher in patchers:
        loaded = any(m is patcher for m in current_loaded_models)
        if loaded and patcher.model.current_weight_patches_uuid == patcher.patches_uuid:
            continue
        for other in [m for m in current_loaded_models if m.model is patcher.model]:
            current_loaded_models.remove(other)
        if patcher.model.current_weight_patches_uuid is not None and patcher.model.current_weight_patches_uuid != patcher.patches_uuid:
            patcher.unpatch_model()
        _move(patcher.model)
        patcher.patch_model()
        current_loaded_models.insert(0, patcher)


def unload_all_models():
    current_loaded_models.clear()
