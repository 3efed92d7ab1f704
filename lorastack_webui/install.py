"""Registering with the WebUI: the tag handler, settings, model lifecycle, per-step schedules, paste, unload."""

from __future__ import annotations

import torch
from modules import extra_networks, script_callbacks, shared

from lib_lorastack.host import SECTION, SPECS, STACK_FIELD
from lib_lorastack.host.infotext import (
    LORA_HASHES,
    legacy_schedules,
    parse_lora_hashes,
    parse_stack_value,
    repair_pasted_prompt,
    shift_schedules,
    stack_value,
)

from .host import host, log
from .tags import LoraStackTags

_installed = False


def install() -> None:
    """Called when the WebUI loads ``scripts/lorastack.py`` (again after "Reload UI")."""
    global _installed
    if _installed:
        return
    _installed = True
    script_callbacks.on_before_ui(take_over_tags)
    script_callbacks.on_app_started(lambda *_: take_over_tags())  # after every extension's before_ui, whatever their order
    script_callbacks.on_app_started(add_routes)
    script_callbacks.on_ui_settings(add_settings)
    script_callbacks.on_model_loaded(model_loaded)
    script_callbacks.on_cfg_denoiser(step_started)
    script_callbacks.on_infotext_pasted(infotext_pasted)
    script_callbacks.on_script_unloaded(uninstall)
    script_callbacks.on_after_component(remember_prompts)
    script_callbacks.on_after_component(_job_end_hook)  # the panel's "Last job" line follows each job's end
    script_callbacks.on_before_ui(xyz_axes)
    host().adapter.install(host())  # the host's model lifecycle (A1111: weight reloads, trash; Forge: reloads)


def uninstall() -> None:
    """Script reload or shutdown: our patches come off the model, the WebUI's functions are put back."""
    global _installed
    if not _installed:
        return
    _installed = False
    with torch.no_grad():
        host().session.clear()
    host().adapter.uninstall()


# --------------------------------------------------------------------- tags
def take_over_tags() -> None:
    """Make our handler the one for ``lora`` and ``lyco``, keeping the built-in's to hand the tags to when the
    takeover is off. The order of extensions' ``before_ui`` callbacks is not ours to rely on, so this runs there,
    again when the app has started, and before each job (``ensure_takeover``)."""
    current = extra_networks.extra_network_registry.get("lora")
    if isinstance(current, LoraStackTags) and extra_networks.extra_network_aliases.get("lyco") is current:
        return
    builtin_handler = current.builtin if isinstance(current, LoraStackTags) else current
    handler = LoraStackTags(builtin_handler)
    extra_networks.register_extra_network(handler)
    extra_networks.register_extra_network_alias(handler, "lyco")
    _paste_first()


def _paste_first() -> None:
    """Our paste handler must run before the built-in's, which renames by any hash (the empty file's too) and would
    leave nothing for us to decide. The WebUI runs callbacks in list order unless an extension's metadata orders
    them; ours goes first."""
    callbacks = script_callbacks.callback_map.get("callbacks_infotext_pasted")
    if not callbacks:
        return
    ours = [c for c in callbacks if getattr(c, "callback", None) is infotext_pasted]
    callbacks[:] = ours + [c for c in callbacks if c not in ours]
    getattr(script_callbacks, "ordered_callbacks_map", {}).pop("infotext_pasted", None)


def takeover_changed() -> None:
    """Turning the takeover off gives every weight back (the built-in then patches); turning it on makes sure
    nothing of the built-in stays merged."""
    h = host()
    if h.options().takeover:
        if shared.sd_model is not None:
            h.builtin_off(shared.sd_model)
    else:
        h.builtin_epoch += 1
        with torch.no_grad():
            reports = h.session.clear()
        restored = sum(r.layers_restored for r in reports)
        log(f"takeover off: {restored} weights restored; the built-in Lora extension handles <lora:…> tags")


def _job_end_hook(component, **kwargs) -> None:
    from .services import job_end_hook

    job_end_hook(component, **kwargs)


def remember_prompts(component, **kwargs) -> None:
    """The prompt textboxes, for the panel (they are created before the scripts' UI)."""
    elem_id = kwargs.get("elem_id")
    if elem_id in ("txt2img_prompt", "img2img_prompt"):
        host().prompts[elem_id.split("_")[0]] = component


def xyz_axes() -> None:
    from .services import lora_names
    from .xyz import add_axes

    try:
        add_axes(lora_names)
    except Exception as exc:  # the plot is optional: the rest works without our axes
        log(f"could not add X/Y/Z plot axes: {type(exc).__name__}: {exc}")


def add_routes(_demo, app) -> None:
    """The preset routes (/lorastack/…), behind the WebUI's API credentials when it runs with --api-auth."""
    if app is None:
        return
    from .api import credentials_from, make_router
    from .presets import family_name, resolver, store

    try:
        app.include_router(make_router(store, resolver, family_name, credentials_from(getattr(shared.cmd_opts, "api_auth", None))))
    except Exception as exc:  # the rest of the extension works without the routes
        log(f"could not add the preset API routes: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------- settings
def add_settings() -> None:
    import gradio as gr

    for spec in SPECS:
        if spec.kind == "radio":
            component, args = gr.Radio, {"choices": list(spec.choices)}
        elif spec.kind == "number":
            component, args = gr.Number, {"precision": 0, "minimum": spec.minimum, "maximum": spec.maximum}
        elif spec.kind == "text":
            component, args = gr.Textbox, None
        else:
            component, args = gr.Checkbox, None
        onchange = takeover_changed if spec.key == "lorastack_takeover" else None
        info = shared.OptionInfo(spec.default, spec.label, component, args, onchange=onchange, section=SECTION, category_id="sd")
        shared.opts.add_option(spec.key, info.info(spec.info) if spec.info else info)


# --------------------------------------------------------------------- models
def model_loaded(sd_model) -> None:
    h = host()
    key = h.new_key(sd_model)
    if h.adapter.drops_replaced_models():
        # Forge unloaded the previous model before loading this one: its weights are gone with our patches in them
        with torch.no_grad():
            for other in h.session.model_keys():
                if other is not key:
                    h.session.release(other, restore=False)


def step_started(params) -> None:
    sd_model = shared.sd_model
    key = getattr(sd_model, "_lorastack_key", None)
    if key is not None:
        with torch.no_grad():
            host().session.set_step(key, sampling_step(params))


def sampling_step(params) -> int:
    """The counter lora-block-weight's schedules read: ``params.sampling_step``, the WebUI's progress counter. It is
    set after each step, so the evaluations of steps 1, 2, 3, … read 0, 0, 1, …; counting on it with
    lora-block-weight's check (``lib_lorastack/schedule.py``) gives its images bit for bit (checked in the real
    WebUI with lora-block-weight b403cb73: ``start=2``, ``start=3`` identical). The same counter on every host."""
    return int(params.sampling_step)


# --------------------------------------------------------------------- paste
def infotext_pasted(infotext: str, params: dict) -> None:
    """Pasted parameters name LoRAs by the names of whoever made the image: rename them to the local files with
    the same hashes (only inside the LoRA index; the empty content's hash is never used)."""
    h = host()
    if not h.options().takeover:
        return
    hashes: dict[str, str] = {}
    problems: list[str] = []
    if LORA_HASHES in params:
        table, found = parse_lora_hashes(params[LORA_HASHES])
        hashes.update(table)
        problems += found
    if STACK_FIELD in params:
        if legacy_schedules(params[STACK_FIELD]):  # written when start/stop counted from 0: same steps, new count
            for key in ("Prompt", "Hires prompt"):
                if isinstance(params.get(key), str):
                    params[key] = shift_schedules(params[key])
        records, found = parse_stack_value(params[STACK_FIELD])
        if records:
            params[STACK_FIELD] = stack_value(records)
        problems += found
        for r in records:
            if r.short_hash:
                hashes.setdefault(r.entry.name, r.short_hash)
    if hashes:
        for key in ("Prompt", "Hires prompt"):
            if isinstance(params.get(key), str):
                params[key], messages = repair_pasted_prompt(params[key], hashes, h.local_name)
                problems += messages
    params.pop(LORA_HASHES, None)  # handled: the built-in's own rename (which trusts the empty hash) has nothing to do
    for p in problems:
        log(f"paste: {p}")
