"""The downstream project's own conftest: ckpt-compat's fixture arrives through its pytest plugin."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
