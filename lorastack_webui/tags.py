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
        if handle is None:
            if tags:
                job["messages"].append(f"this model is not SD1.x, SD2.x or SDXL: {len(tags)} LoRA tag(s) ignored")
            _write(p, job, options)
            return
        h.builtin_off(sd_model)
        seeds = getattr(p, "all_seeds", None) or [0]
        multiplier, mode = (panel.multiplier, panel.mode) if panel is not None else (1.0, None)
        activation = h.session.activate(handle, tags, seed=int(seeds[0]), multiplier=multiplier, mode=mode)
        for m in [*(panel.messages if panel is not None else []), *getattr(p, "_lorastack_preset_messages", [])]:
            if m not in job["messages"]:
                job["messages"].append(m)
        job["pairs"] += [(u.mentioned, u.short_hash or "") for u in activation.uses]
        job["stack" if not hires else "hires"] = activation.stack_field()
        for m in activation.messages:
            if m not in job["messages"]:
                job["messages"].append(m)
        line = activation.console_line()
        if line:
            print(line, flush=True)
        h.last_job = _last_job(activation)
        if options.popup and activation.messages:
            _popup(activation.messages)
        _write(p, job, options)

    def deactivate(self, p):
        if not host().options().takeover and self.builtin is not None:
            return self.builtin.deactivate(p)
        return None


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
