"""The panel's services in the WebUI: the LoRA index as the cards show it, defaults from the LoRA's own data, the
loaded model's family, the last job's line."""

from __future__ import annotations

from modules import shared

from lib_lorastack.formats.targets import Family
from lib_lorastack.host.library import family_of_metadata, lora_defaults

from . import builtin
from .host import family_of, host
from .panel import DoctorActions, PanelServices


def loaded_model():
    """The loaded model, or None while there is none. Never loads it: the WebUI's ``shared.sd_model`` loads (and
    waits for) the model on first access, which held the "create ui" step until the model was there."""
    from modules import sd_models

    data = getattr(sd_models, "model_data", None)
    if data is not None and hasattr(data, "sd_model"):
        return data.sd_model
    return shared.sd_model


def current_family() -> Family | None:
    model = loaded_model()
    return None if model is None else family_of(model)


def lora_names(show_all: bool) -> list[str]:
    """The names a card would insert (alias or file name, as the built-in's setting says), for the loaded model's
    family unless ``show_all`` (LoRAs of unknown base model are shown, as the cards show them)."""
    family = current_family()
    catalog = host().catalog()
    net = builtin.networks()
    names: list[str] = []
    for entry in {str(e.path): e for e in catalog.entries.values()}.values():
        lora_family = family_of_metadata(entry.metadata)
        if not show_all and family is not None and lora_family is not None and lora_family is not family:
            continue
        on_disk = net.available_networks.get(entry.name) if net is not None else None
        names.append(on_disk.get_alias() if on_disk is not None else entry.name)
    return sorted(set(names), key=str.lower)


def defaults(name: str) -> tuple[float | None, str]:
    entry = host().catalog().find(name) if name else None
    if entry is None:
        return None, ""
    return lora_defaults(entry.path, entry.metadata)


def wrong_family(names: list[str]) -> list[str]:
    family = current_family()
    if family is None:
        return []
    catalog = host().catalog()
    out = []
    for name in names:
        entry = catalog._lookup(name)
        lora_family = None if entry is None else family_of_metadata(entry.metadata)
        if lora_family is not None and lora_family is not family:
            out.append(name)
    return out


def services() -> PanelServices:
    from modules.ui_components import InputAccordion

    from .presets import actions, expand_for_panel

    h = host()
    doctor = DoctorActions(run=_doctor, bake=_bake)
    return PanelServices(
        lora_names=lora_names, lora_defaults=defaults, family=current_family, block_presets=h.lbw_presets,
        wrong_family=wrong_family, last_job=lambda: h.last_job, accordion=InputAccordion, max_rows=h.options().rows,
        presets=actions(), doctor=doctor, expand=expand_for_panel,
    )  # fmt: skip


def job_end_hook(component, **kwargs) -> None:
    """The generation info box of a tab (created after the scripts' UI) is filled when a job ends: the panel's
    "Last job" line follows it (an ``on_after_component`` callback)."""
    from .panel import built_panel, wire_job_end

    elem_id = kwargs.get("elem_id") or ""
    if elem_id in ("html_info_txt2img", "html_info_img2img"):
        panel = built_panel(elem_id.rsplit("_", 1)[1])
        if panel is not None:
            wire_job_end(panel, component)


def _doctor(state, prompt: str, with_base: bool, progress) -> tuple[str, str]:
    from lib_lorastack.host.doctor_job import run_doctor

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    checkpoint = getattr(info, "filename", None) if with_base else None
    return run_doctor(state, prompt, host().catalog(), current_family(), checkpoint=checkpoint, presets=host().lbw_presets(), progress=progress)


def _bake(state, prompt: str, name: str, progress) -> str:
    import os

    from modules import paths

    from lib_lorastack.host.doctor_job import run_bake

    folder = getattr(shared.cmd_opts, "lora_dir", None) or os.path.join(paths.models_path, "Lora")
    message = run_bake(state, prompt, host().catalog(), current_family(), folder, name, presets=host().lbw_presets(), progress=progress)
    host().catalog().rescan()
    return message
