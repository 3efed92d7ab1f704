"""Forge Neo's ``modules``: what Neo changes is here, then Forge's stand-in, then A1111's."""

import os

_TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
__path__ += [os.path.join(_TESTS, "forge_stub", "modules"), os.path.join(_TESTS, "webui_stub", "modules")]
