"""Stack doctor, bake and merge: where the LoRAs of a stack collide and how far they move the model (training-free,
from the factors), suggestions in the user's syntax, and freezing a stack into one LoRA or a checkpoint."""

from .bake import LoraBake, bake_lora
from .basefile import BaseCheckpoint, CheckpointError
from .checkpoint import CheckpointBake, bake_checkpoint
from .heatmap import heatmap_png
from .merge import MERGE_METHODS, merge_stack, merge_tensors
from .metrics import StackMetrics, measure
from .report import DoctorReport, diagnose
from .stack import StackInputError, StackItem, load_stack, stack_item

__all__ = [
    "MERGE_METHODS",
    "BaseCheckpoint",
    "CheckpointBake",
    "CheckpointError",
    "DoctorReport",
    "LoraBake",
    "StackInputError",
    "StackItem",
    "StackMetrics",
    "bake_checkpoint",
    "bake_lora",
    "diagnose",
    "heatmap_png",
    "load_stack",
    "measure",
    "merge_stack",
    "merge_tensors",
    "stack_item",
]
