"""What the panel adds to one job: its rows as tags, the multiplier, a mode override, and messages."""

from __future__ import annotations

from dataclasses import dataclass, field

from lib_lorastack.host.panel import panel_tags, parse_state

from .host import host


@dataclass
class PanelJob:
    tags: list[list[str]] = field(default_factory=list)
    multiplier: float = 1.0
    mode: str | None = None
    messages: list[str] = field(default_factory=list)


def panel_job(p, enabled, state) -> PanelJob | None:
    """The panel's contribution to job ``p`` (None when the panel is off and asks nothing).

    API callers may pass the stack alone as the first argument (``"args": [{"rows": [...]}]``): the WebUI then
    fills the second with the panel's default, and the object itself means "on"."""
    if isinstance(enabled, dict | list):
        enabled, state = True, enabled
    if not enabled:
        return None
    parsed = parse_state(state, host().lbw_presets())
    prompt = (getattr(p, "all_prompts", None) or [getattr(p, "prompt", "")])[0]
    tags, notes = panel_tags(parsed.state, prompt if isinstance(prompt, str) else "")
    # The conditioning cache is keyed on the prompt's tags, not on rows or the multiplier: it is emptied whenever
    # they change the weights (tags.py ``forget_conditionings``), so a repeated panel job reuses its conditioning.
    return PanelJob(tags, parsed.state.multiplier, parsed.state.mode, parsed.problems + notes)
