"""Durations as Istio and Gateway API accept them: Go duration strings such as `10s`, `1.5s`, `5m`, `1h30m`."""
from __future__ import annotations

import re

from pydantic import AfterValidator
from typing_extensions import Annotated

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; ValueError when it is not one."""
    if not text or _PART.sub("", text) != "":
        raise ValueError(f"invalid duration {text!r}: expected a number with a unit (ns, us, ms, s, m, h), e.g. '10s'")
    return sum(float(num) * _UNITS[unit] for num, unit in _PART.findall(text))


def _check(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[str, AfterValidator(_check)]
