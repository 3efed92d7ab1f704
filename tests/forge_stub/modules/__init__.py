"""Forge's ``modules``: what Forge changes is here, the rest is A1111's (the stand-in in ../webui_stub)."""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "webui_stub", "modules"))
