"""Replace a function on a module or class, remember the original, put it back (as modules/patches.py)."""

from collections import defaultdict

originals: dict = defaultdict(dict)


def patch(key, obj, field, replacement):
    if (obj, field) in originals[key]:
        raise RuntimeError(f"patch for {field} is already applied")
    originals[key][(obj, field)] = getattr(obj, field)
    setattr(obj, field, replacement)
    return originals[key][(obj, field)]


def undo(key, obj, field):
    if (obj, field) not in originals[key]:
        raise RuntimeError(f"there is no patch for {field} to undo")
    setattr(obj, field, originals[key].pop((obj, field)))


def original(key, obj, field):
    return originals[key].get((obj, field))
