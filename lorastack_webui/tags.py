"""Our handler of the ``lora`` tag (and its ``lyco`` alias), in place of the built-in's."""

from __future__ import annotations

from modules import extra_networks, shared

from lib_lorastack.host import LORA_HASHES, STACK_ERRORS, STACK_FIELD
from lib_lorastack.host.infotext import errors_value, lora_hashes_value

from .host import host, log

HIRES_STACK_FIELD = "LoRA stack hires"


class LoraStackTags(extra_networks.ExtraNetwork):
    """``builtin``: the built-in's handler, which gets the tags when the takeover setting is off."""

    def __init__(self, builtin_handler=None) -> None:
        super().__init__("lora")
        self.builtin = builtin_handler

    def activate(self, p, params_list):
        h = host()
        options = h.options()
        if not options.takeover and self.builtin is not None:
            return self.builtin.activate(p, params_list)
        tags = [[str(i) for i in params.items] for params in params_list if params.items]
        tags = _add_network_to_prompt(p, tags)
        panel = getattr(p, "_lorastack_panel", None)  # the panel's rows for this job (scripts/lorastack.py process)
        if panel is not None:
            tags += panel.tags
        sd_model = p.sd_model
        handle = h.model_handle(sd_model)
        hires = bool(getattr(p, "is_hr_pass", False))
        job = _job(p, hires)
        reason = _builtin_reason(h, sd_model, handle)
        if reason is not None:
            return self._hand_to_builtin(p, tags, job, options, reason)
        h.builtin_off(sd_model)
        seeds = getattr(p, "all_seeds", None) or [0]
        multiplier, mode = (panel.multiplier, panel.mode) if panel is not None else (1.0, None)
        mode, mode_note = _mode(h, sd_model, options.mode, mode)
        activation = h.session.activate(handle, tags, seed=int(seeds[0]), multiplier=multiplier, mode=mode)
        if activation.changed:
            forget_conditionings(p)  # the text encoder may have changed under an unchanged prompt (a file rewritten)
        if mode_note and activation.uses:
            p.extra_generation_params[MODE_FIELD] = mode_note
            print(f"[LoRA Stack] {mode_note}", flush=True)
        outside = []  # the panel's and the presets' messages: the console gets them as well (once per job)
        for m in [*(panel.messages if panel is not None else []), *getattr(p, "_lorastack_preset_messages", [])]:
            if m not in job["messages"]:
                job["messages"].append(m)
                outside.append(m)
        job["pairs"] += [(u.mentioned, u.short_hash or "") for u in activation.uses]
        job["stack" if not hires else "hires"] = activation.stack_field()
        for m in activation.messages:
            if m not in job["messages"]:
                job["messages"].append(m)
        line = activation.console_line()
        if line:
            print(line, flush=True)
        for m in outside:
            if m not in activation.messages:
                print(f"[LoRA Stack]   {m}", flush=True)
        h.last_job = _last_job(activation) + (f"; {mode_note}" if mode_note and activation.uses else "")  # the mode and why
        if options.popup and activation.messages:
            _popup(activation.messages)
        _write(p, job, options)

    def deactivate(self, p):
        if self.builtin is not None and (not host().options().takeover or getattr(p, "_lorastack_to_builtin", False)):
            return self.builtin.deactivate(p)
        return None

    def _hand_to_builtin(self, p, tags: list[list[str]], job: dict, options, reason: str):
        """A model the engine does not handle: the tags go to the built-in (which also unloads its LoRAs when there
        are none), so nothing is lost; the job info says so."""
        h = host()
        h.builtin_epoch += 1  # the built-in may patch now: check again before we patch a model
        p._lorastack_to_builtin = True
        if tags:
            job["messages"].append(f"{reason}: {len(tags)} LoRA tag(s) handed to the built-in Lora extension")
            if self.builtin is None:
                job["messages"][-1] = f"{reason}, and the built-in Lora extension is off: {len(tags)} LoRA tag(s) not applied"
        if tags or not job["pairs"]:  # A1111 also calls every handler without tags: that call must not hide the job's
            h.last_job = f"built-in Lora extension ({reason})" if tags else "no LoRA"
        _write(p, job, options)
        if self.builtin is not None:
            return self.builtin.activate(p, [extra_networks.ExtraNetworkParams(items=t) for t in tags])
        return None


MODE_FIELD = "LoRA stack mode"


_CONDITIONING_CACHES = ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc")


def forget_conditionings(p) -> None:
    """Drop every conditioning the host caches by prompt, the hires pass's included, so that none computed with other
    text-encoder weights is reused. Each cache is a list on the class that defines it, which every job binds when it
    is made (A1111, Forge and Neo alike); it is emptied in place and the job stays bound to it, so the conditionings
    this job computes land where the next job looks. (Forge's and Neo's ``clear_prompt_cache`` binds new lists to the
    job and to the class separately: this job's conditionings then go into a list no later job reads, and the next
    job encodes its prompt again, a repeated one too. Binding a new list to ``type(p)`` alone leaves the base class's
    list, the one the next job reads, holding conditionings from before the change.)"""
    for name in _CONDITIONING_CACHES:
        home = next((c for c in type(p).__mro__ if name in vars(c)), None)
        shared_list = vars(home)[name] if home is not None else None
        own = vars(p).get(name) if hasattr(p, "__dict__") else None
        for cache in (shared_list, own):
            if isinstance(cache, list):
                cache[:] = [None] * len(cache)
        if isinstance(shared_list, list) and isinstance(own, list) and own is not shared_list:
            setattr(p, name, shared_list)


def _builtin_reason(h, sd_model, handle) -> str | None:
    """Why this model's tags go to the built-in (None: they are ours)."""
    if handle is None:
        name = h.adapter.model_name(sd_model) if h.adapter is not None else type(sd_model).__name__
        return f"this model ({name}) is not SD1.x, SD2.x or SDXL"
    return h.adapter.builtin_reason(sd_model)


def _mode(h, sd_model, setting: str, override: str | None) -> tuple[str | None, str | None]:
    """The engine mode for this job and, when the host's storage chose it, why (for the infotext and console). In
    "auto" the engine itself puts weights stored in 8-bit floats online, so the storage note is the why there too."""
    if override is not None:
        return override, None
    chosen = h.adapter.mode_for(sd_model, setting)
    if chosen != setting:
        return chosen, h.adapter.storage_note(sd_model)
    return None, (h.adapter.storage_note(sd_model) if setting == "auto" else None)


def _last_job(activation) -> str:
    r = activation.report
    if not activation.uses:
        return "no LoRA"
    names = ", ".join(u.mentioned for u in activation.uses)
    work = f"{r.layers_written} weights written" if r is not None and r.layers_written else "nothing to rewrite"
    return f"{names} ({activation.mode}): {work} in {activation.seconds * 1000:.0f} ms"


def _job(p, hires: bool) -> dict:
    """What this job has applied: the first pass of each batch starts the hashes afresh and the hires pass adds to
    them (as the built-in does); messages gather over the whole job."""
    job = getattr(p, "_lorastack_job", None)
    if job is None:
        job = p._lorastack_job = {"pairs": [], "stack": "", "hires": "", "messages": []}
    if not hires:
        job["pairs"] = []
    return job


def _write(p, job: dict, options) -> None:
    params = p.extra_generation_params
    for key in (LORA_HASHES, STACK_FIELD, HIRES_STACK_FIELD, STACK_ERRORS):
        params.pop(key, None)
    hashes = lora_hashes_value(job["pairs"])
    if hashes and shared.opts.data.get("lora_add_hashes_to_infotext", True):
        params[LORA_HASHES] = hashes
    if options.infotext and job["stack"]:
        params[STACK_FIELD] = job["stack"]
    if options.infotext and job["hires"] and job["hires"] != job["stack"]:
        params[HIRES_STACK_FIELD] = job["hires"]
    if job["messages"]:
        params[STACK_ERRORS] = errors_value(job["messages"])
        if options.job_info:
            for m in job["messages"]:
                p.comment(f"LoRA Stack: {m}")


def _add_network_to_prompt(p, tags: list[list[str]]) -> list[list[str]]:
    """The built-in's setting "Add network to prompt" (``sd_lora``), honoured the same way."""
    extra = shared.opts.data.get("sd_lora", "None")
    if not extra or extra == "None" or any(t and t[0] == extra for t in tags):
        return tags
    if host().catalog().find(extra) is not None:
        weight = shared.opts.data.get("extra_networks_default_multiplier", 1.0)
        p.all_prompts = [x + f"<lora:{extra}:{weight}>" for x in p.all_prompts]
        return [*tags, [extra, str(weight)]]
    return tags


def _popup(messages: list[str]) -> None:
    try:
        import gradio as gr

        for m in messages[:3]:
            gr.Warning(f"LoRA Stack: {m}")
    except Exception as exc:  # a popup is a convenience: the console and job info already have the message
        log(f"could not show a popup: {exc}")
