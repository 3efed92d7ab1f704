"""Settings: labels with defaults, values, change callbacks (as modules/options.py)."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, refresh=None, category_id=None, **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.category_id = onchange, section, category_id
        self.comment_after = ""

    def info(self, text):
        self.comment_after += f"({text})"
        return self


class Options:
    def __init__(self) -> None:
        self.data_labels: dict[str, OptionInfo] = {}
        self.data: dict = {}

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def set(self, key, value):
        old = self.data.get(key)
        self.data[key] = value
        info = self.data_labels.get(key)
        if old != value and info is not None and info.onchange is not None:
            info.onchange()
        return True

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
        if call:
            func()

    def __getattr__(self, item):
        data = self.__dict__.get("data", {})
        if item in data:
            return data[item]
        labels = self.__dict__.get("data_labels", {})
        if item in labels:
            return labels[item].default
        raise AttributeError(item)
