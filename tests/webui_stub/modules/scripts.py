"""Scripts: the base class, always-on hooks, and loading a script file the way the WebUI does (its extension folder
first on sys.path while it loads; every Script subclass in the module's namespace is a script)."""

import importlib.util
import inspect
import os
import sys

AlwaysVisible = object()
_current_basedir = None
scripts_data: list = []  # ScriptClassData of every loaded script (the X/Y/Z plot looks for itself here)


def basedir():
    return _current_basedir or os.getcwd()


class Script:
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def ui(self, is_img2img):
        return []

    def show(self, is_img2img):
        return True

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass


def load_script_file(path, extension_dir):
    """Import ``path`` as the WebUI imports a script; the Script subclasses it defines."""
    global _current_basedir
    saved = list(sys.path)
    sys.path = [extension_dir, *sys.path]
    _current_basedir = extension_dir
    try:
        name = os.path.basename(path)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path = saved
        _current_basedir = None
    return module, [c for c in module.__dict__.values() if inspect.isclass(c) and issubclass(c, Script)]


class ScriptRunner:
    def __init__(self, scripts):
        self.alwayson_scripts = []
        start = 0
        for script in scripts:
            if script.show(False) is AlwaysVisible:
                script.alwayson = True
                controls = script.ui(False) or []
                script.args_from, script.args_to = start, start + len(controls)
                start += len(controls)
                self.alwayson_scripts.append(script)

    def _call(self, name, p, *extra, **kwargs):
        for s in self.alwayson_scripts:
            getattr(s, name)(p, *extra, *p.script_args[s.args_from:s.args_to], **kwargs)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._call("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def before_hr(self, p):
        self._call("before_hr", p)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)
