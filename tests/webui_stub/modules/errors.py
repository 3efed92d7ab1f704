import traceback

displayed: list[str] = []


def display(e, task):
    displayed.append(f"{task}: {type(e).__name__}: {e}")
    traceback.print_exception(e)


def report(message, exc_info=False):
    displayed.append(message)
