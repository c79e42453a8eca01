"""What a meshway process reports as its build (`meshway version`, the control plane's
run/version.json), in the fields of Istio's `version.BuildInfo` (Python's version where Istio has Go's)."""
from __future__ import annotations

import platform

from . import __version__


def build_version_info() -> dict[str, str]:
    return {"version": __version__, "revision": "unknown", "python_version": platform.python_version(),
            "status": "Clean", "tag": __version__}
