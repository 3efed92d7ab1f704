"""Each weight's program (its factors concatenated for one composition, see ``fused.WeightProgram``), kept for
the next apply under a byte budget.

On a GPU a program is kept for any composition that may come back (a switch back to an earlier stack then builds
nothing). On the CPU a program is rebuilt faster than its product runs, and it sits in the same memory as the
model: only the programs of the applied state stay, and their concatenated factors are freed after each apply
(``release_cpu``; a strength change plans nothing new, it only concatenates again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Set

import torch

from .device_cache import FactorCache
from .fused import WeightProgram, build_program
from .plan import ParamKey, ParamPlan
from .transaction import tag


class ProgramCache:
    def __init__(self, factors: FactorCache, compute_dtype: torch.dtype) -> None:
        self.factors = factors
        self.compute_dtype = compute_dtype
        self._programs: OrderedDict[tuple, WeightProgram] = OrderedDict()
        self.builds = 0

    def get(self, plan: ParamPlan, param: torch.Tensor) -> WeightProgram:
        """``plan``'s program for ``param`` on its device, built once per composition."""
        cache_key = (plan.key, plan.composition)
        program = self._programs.get(cache_key)
        if program is not None and program.device == param.device:
            self._programs.move_to_end(cache_key)
            return program
        try:
            program = build_program(plan, param, self.factors, self.compute_dtype)
        except BaseException as exc:
            tag(exc, plan)
            raise
        self.builds += 1
        self._programs[cache_key] = program
        self._programs.move_to_end(cache_key)
        return program

    def trim(self, current: Set[tuple[ParamKey, tuple]]) -> None:
        """CPU programs of (key, composition) pairs outside ``current`` go; then the least recently used until the
        budget holds (a program's parts are built on first use, so the bytes are counted now)."""
        for cache_key in [k for k, p in self._programs.items() if p.device.type == "cpu" and k not in current]:
            del self._programs[cache_key]
        total = self.nbytes()
        while total > self.factors.budget and len(self._programs) > 1:
            _, evicted = self._programs.popitem(last=False)
            total -= evicted.nbytes()

    def release_cpu(self) -> int:
        """Free the concatenated factors of the CPU programs (the bytes freed): each apply rebuilds them (a fraction
        of the time of its products), and between applies they would only sit in the model's memory."""
        freed = 0
        for program in self._programs.values():
            if program.device.type == "cpu":
                freed += program.nbytes()
                program.release()
        return freed

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self._programs.values())

    def __len__(self) -> int:
        return len(self._programs)

    def clear(self) -> None:
        self._programs.clear()
