"""One class per adapter algorithm behind ``base.Adapter``; ``registry`` picks the class for a module's keys."""

from .base import Adapter, WeightUpdate
from .registry import ADAPTER_CLASSES, KNOWN_SUFFIXES, build_adapter, find_adapter_class

__all__ = ["ADAPTER_CLASSES", "KNOWN_SUFFIXES", "Adapter", "WeightUpdate", "build_adapter", "find_adapter_class"]
