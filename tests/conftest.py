import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the browser tests' environment (.venv-ui) has no hypothesis and needs none
    settings = None

if settings is not None:
    # CI runs the fuzz tests at full strength; locally they stay quick.
    settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", deadline=None, max_examples=200)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
