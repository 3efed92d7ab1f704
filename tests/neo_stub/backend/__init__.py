"""Forge Neo's ``backend``: its patcher and memory management here, the layers and the loader as Forge's."""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "forge_stub", "backend"))
