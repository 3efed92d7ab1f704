"""The patch engine: fused or online, incremental, transactional; restores base weights bit for bit."""

from .engine import ApplyReport, EngineStats, PatchEngine
from .plan import StackLayer
from .resolve import resolve_modules

__all__ = ["ApplyReport", "EngineStats", "PatchEngine", "StackLayer", "resolve_modules"]
