"""Envoy logging levels for `proxy-config log` and `ztunnel-config log`, as istioctl parses them
(`istioctl/pkg/proxyconfig/proxyconfig.go` logCmd): `--level LEVEL` sets every logger,
`--level LOGGER:LEVEL,...` (or `LOGGER=LEVEL`, `ns::LOGGER:LEVEL`) sets named ones. Pure."""
from __future__ import annotations

import re

LEVELS = {"trace": "trace", "debug": "debug", "info": "info", "warning": "warning", "warn": "warning",
          "error": "error", "critical": "critical", "off": "off"}
ALL_LOGGERS = "level"  # Envoy's POST /logging?level=L sets every logger


def parse_level_spec(spec: str, known_loggers: set[str] | None = None) -> list[tuple[str, str]]:
    """`debug` | `http:debug,rbac=trace` -> [(logger, level)] with `level` (all loggers) first;
    ValueError names an unknown level or (when `known_loggers` is given) an unknown logger."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if ":" not in part and "=" not in part:
            if part not in LEVELS:
                raise ValueError(f"unrecognized logging level: {part}")
            out = {ALL_LOGGERS: LEVELS[part]}
            continue
        logger, level = re.split(r"[:=]", part.split("::")[-1], maxsplit=1)
        if known_loggers is not None and logger != ALL_LOGGERS and logger not in known_loggers:
            raise ValueError(f"unrecognized logger name: {logger}")
        if level not in LEVELS:
            raise ValueError(f"unrecognized logging level: {level}")
        out[logger] = LEVELS[level]
    first = [(ALL_LOGGERS, out.pop(ALL_LOGGERS))] if ALL_LOGGERS in out else []
    return first + sorted(out.items())


def build_log_queries(levels: list[tuple[str, str]]) -> list[str]:
    """The admin paths to POST, in order: `/logging?level=debug`, `/logging?http=trace`."""
    return [f"/logging?{logger}={level}" for logger, level in levels] or ["/logging"]


def find_loggers(text: str) -> set[str]:
    """Logger names in Envoy's `/logging` answer (`active loggers:\\n  http: info\\n ...`)."""
    return {line.strip().split(":", 1)[0] for line in text.splitlines()[1:] if ":" in line}
