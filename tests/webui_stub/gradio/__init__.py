"""Only the names the adapter's settings refer to."""


class _Component:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class Radio(_Component):
    pass


class Number(_Component):
    pass


class Checkbox(_Component):
    pass


warnings: list[str] = []


def Warning(message: str) -> None:
    warnings.append(message)
