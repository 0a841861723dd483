"""Make flashpods_devhost importable from the work tree when it is not installed."""

import sys
from pathlib import Path

try:
    import flashpods_devhost.render  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "services" / "devhost"))
