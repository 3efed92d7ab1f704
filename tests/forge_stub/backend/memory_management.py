"""Forge's backend/memory_management.py, as far as LoRAs see it: a patcher object not loaded yet is loaded, which
moves every parameter of its model to new storage (a device copy: the Parameter object stays, its data is new),
unloads other patchers of the same model, then merges its LoRA patches (``refresh_loras``)."""

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
        if any(loaded is patcher for loaded in current_loaded_models):
            continue
        for loaded in [m for m in current_loaded_models if m.model is patcher.model]:
            current_loaded_models.remove(loaded)
            _move(loaded.model)  # to the offload device
        _move(patcher.model)
        patcher.refresh_loras()
        current_loaded_models.insert(0, patcher)


def unload_all_models():
    current_loaded_models.clear()
