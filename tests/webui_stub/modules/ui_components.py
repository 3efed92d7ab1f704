import gradio as gr


class InputAccordion(gr.Checkbox):
    """A checkbox that is also an accordion (the WebUI's on/off accordion)."""

    def __enter__(self):
        return self
