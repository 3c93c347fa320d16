from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Property tests run a few dozen examples in the ordinary suite; CKPT_COMPAT_EXAMPLES raises it.
settings.register_profile(
    "default",
    max_examples=int(os.environ.get("CKPT_COMPAT_EXAMPLES", "15")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")

# A downstream project, run as its own pytest session by tests/test_pytest_plugin.py.
collect_ignore = ["downstream"]
