"""The AUTOMATIC1111 WebUI adapter: the only code that imports the WebUI's ``modules`` (and gradio).

It turns the WebUI's objects into the plain values ``lib_lorastack.host`` takes and shows what comes back where
the user looks (console, job info, infotext). ``scripts/lorastack.py`` calls ``install.install()`` when the WebUI
loads it. ``panel.py`` imports gradio but not the WebUI, so the panel also runs in a plain gradio app (tests/ui).
"""
