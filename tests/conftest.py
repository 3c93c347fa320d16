from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from ckpt_compat.isolation import MEMORY_LIMIT, Pool
from ckpt_compat.workers import ARGV

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


@pytest.fixture(scope="session")
def workers() -> Iterator[Pool]:
    """One pool of the commands' workers for every test of this test process that only needs them
    to answer: a pool's start (a fork server importing torch and every format's packages, then its
    workers' first task) costs ~4.5 s, a small corpus's verify on a started pool ~0.1 s. The tests
    of the pool itself (a killed or hung worker) start their own. Two workers whatever the cores:
    the test processes share the machine's (and a test compares two workers' results with one's)."""
    with Pool(ARGV, jobs=2, timeout=120.0, memory=MEMORY_LIMIT).start() as pool:
        yield pool
