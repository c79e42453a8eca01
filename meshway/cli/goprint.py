"""Go's printing of values decoded from JSON, as kubectl's printers use it: fmt's %v (`go_sprint`,
`go_float`) and encoding/json (`go_json`). Pure."""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from .jsonpath_parser import JSONPathError


def go_type(value: Any) -> str:
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, _Byte):
        return "uint8"
    return {str: "string", int: "int64", float: "float64"}.get(type(value), type(value).__name__)


class _Byte(int):
    """One byte of a string, as kubectl's `*` and `..` yield them (printed as a number)."""


def go_float(value: float) -> str:
    """fmt's %v of a float64: the shortest digits that round-trip, %e form when the exponent is below -4
    or at least 6 (1e+06, 1.5e-07), else plain (123456, 0.001)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    exp = len(digits) + int(exponent) - 1  # the decimal exponent of the first digit
    minus = "-" if sign else ""
    if value == 0:
        return minus + "0"
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{minus}0.{'0' * (-exp - 1)}{text}"
    if len(text) <= exp + 1:
        return minus + text + "0" * (exp + 1 - len(text))
    return f"{minus}{text[:exp + 1]}.{text[exp + 1:]}"


def go_sprint(value: Any) -> str:
    """fmt's %v of a value decoded from JSON into interface{}."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_sprint(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_sprint(v) for v in value) + "]"
    return str(value)


def _go_json_float(value: float) -> str:
    """encoding/json's float64: shortest digits, plain from 1e-6 up to 1e21, else 1e+21 / 1e-7."""
    if value != value or value in (float("inf"), float("-inf")):
        raise JSONPathError(f"json: unsupported value: {go_float(value)}")
    if value == 0 or 1e-6 <= abs(value) < 1e21:
        text = format(Decimal(repr(value)), "f")
        return text[:-2] if text.endswith(".0") else text
    mantissa, _, exp = go_float(value).partition("e")
    return f"{mantissa}e{exp[0]}{int(exp[1:])}"


def _go_json_string(value: str) -> str:
    return (json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def go_json(value: Any, indent: bool = False, _depth: int = 0) -> str:
    """encoding/json's Marshal (or MarshalIndent with four spaces) of a JSON value: sorted keys, <>&
    escaped, Go's float format."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_json_float(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return _go_json_string(value)
    if isinstance(value, dict):
        parts = [f"{_go_json_string(k)}:{' ' if indent else ''}{go_json(value[k], indent, _depth + 1)}"
                 for k in sorted(value)]
        return _join("{", parts, "}", indent, _depth)
    if isinstance(value, list):
        return _join("[", [go_json(v, indent, _depth + 1) for v in value], "]", indent, _depth)
    raise JSONPathError(f"json: unsupported type: {go_type(value)}")


def _join(open_: str, parts: list[str], close: str, indent: bool, depth: int) -> str:
    if not parts:
        return open_ + close
    if not indent:
        return open_ + ",".join(parts) + close
    inner, outer = "\n" + "    " * (depth + 1), "\n" + "    " * depth
    return open_ + inner + ("," + inner).join(parts) + outer + close
