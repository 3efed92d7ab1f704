"""Enough of gradio 3.41's building API for the WebUI stand-in to load the panel: components are created, used as
containers, and their events registered (``events`` records them); nothing is rendered. The panel itself is tested
with the real gradio in a browser (tests/ui)."""

events: list[tuple[str, str]] = []
warnings: list[str] = []


class _Component:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs
        self.value = kwargs.get("value", args[0] if args else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __getattr__(self, name):
        if name in ("input", "change", "click", "release", "select", "blur", "submit"):
            return lambda fn=None, *a, **kw: events.append((type(self).__name__, name))
        raise AttributeError(name)


class Blocks(_Component):
    pass


class Row(_Component):
    pass


class Group(_Component):
    pass


class Accordion(_Component):
    pass


class Column(_Component):
    pass


class HTML(_Component):
    pass


class Slider(_Component):
    pass


class Textbox(_Component):
    pass


class Dropdown(_Component):
    pass


class Button(_Component):
    pass


class Radio(_Component):
    pass


class Number(_Component):
    pass


class Checkbox(_Component):
    pass


class File(_Component):
    pass


class Image(_Component):
    pass


class Progress:
    def __call__(self, fraction, desc=None):
        return None


class components:
    Component = _Component


def update(**kwargs):
    return {"__type__": "update", **kwargs}


def Warning(message: str) -> None:
    warnings.append(message)
