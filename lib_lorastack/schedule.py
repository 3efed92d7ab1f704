"""When a scheduled LoRA is active: ``start=``/``stop=`` count sampling steps from 1, as lora-block-weight does in
the AUTOMATIC1111 WebUI (its check is ``sampling_step > N - 2`` on the sampler's 0-based counter).

``start=N`` joins at the N-th step (``start=1`` and ``start=0`` are the plain LoRA), ``stop=N`` leaves at the N-th
step (``stop=1`` never runs); the hires pass counts again from 1. One rule on every host.
"""

from __future__ import annotations


def schedule_active(start: int | None, stop: int | None, step: int | None) -> bool:
    """``step``: the sampler's 0-based step counter (``None``: outside sampling, everything applies)."""
    if step is None:
        return True
    number = step + 1
    return (start is None or number >= start) and (stop is None or number < stop)


def never_active(start: int | None, stop: int | None) -> bool:
    """A schedule under which no step runs the LoRA."""
    return stop is not None and stop <= max(start or 1, 1)


def steps_text(start: int | None, stop: int | None) -> str:
    """The steps a schedule runs, for people: ``steps 5-19``, ``steps 1-end``, ``no step``."""
    if never_active(start, stop):
        return "no step"
    first = max(start or 1, 1)
    return f"steps {first}-{stop - 1 if stop is not None else 'end'}"
