"""When the panel cannot be built or wired under this host's gradio: the traceback once in the console, and the two
inputs the script's API arguments need (so ``alwayson_scripts`` rows, the tags and the settings keep working)."""

from __future__ import annotations

import traceback

from .host import log

_reported: set[str] = set()


def log_panel_fault(what: str) -> None:
    if what not in _reported:
        _reported.add(what)
        log(f"could not {what} (the tags, API rows and settings still work):\n{traceback.format_exc()}")


def hidden_panel_inputs() -> list:
    import gradio as gr

    return [gr.Checkbox(value=False, visible=False), gr.Textbox(value="", visible=False)]
