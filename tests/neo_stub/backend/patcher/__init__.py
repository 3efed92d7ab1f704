import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "forge_stub", "backend", "patcher"))
