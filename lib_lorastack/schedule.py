"""When a scheduled LoRA is active: lora-block-weight's rule in the AUTOMATIC1111 WebUI, on the counter it reads.

lora-block-weight checks ``sampling_step > N - 2`` (on for ``start=N``, off for ``stop=N``) on the WebUI's
``sampling_step``: the progress counter the sampler's callback sets after each step, so the model evaluations of
steps 1, 2, 3, 4, … see 0, 0, 1, 2, …. The hosts pass that same counter (``lorastack_webui/install.py``), so a
``start=``/``stop=`` tuned with lora-block-weight gives its image: ``start=1`` (and ``0``) is the plain LoRA,
``start=N`` joins once the counter reaches N - 1. One rule on every host; the hires pass counts again.
"""

from __future__ import annotations


def schedule_active(start: int | None, stop: int | None, step: int | None) -> bool:
    """``step``: the WebUI's ``sampling_step`` counter (``None``: outside sampling, everything applies)."""
    if step is None:
        return True
    number = step + 1
    return (start is None or number >= start) and (stop is None or number < stop)


def never_active(start: int | None, stop: int | None) -> bool:
    """A schedule under which no step runs the LoRA."""
    return stop is not None and stop <= max(start or 1, 1)


def steps_text(start: int | None, stop: int | None) -> str:
    """The schedule for people, in the counter's numbers (``steps 5-19``, ``steps 1-end``, ``no step``)."""
    if never_active(start, stop):
        return "no step"
    first = max(start or 1, 1)
    return f"steps {first}-{stop - 1 if stop is not None else 'end'}"
