"""kubectl's --sort-by (kubectl/pkg/cmd/get/sorter.go): order objects by the first value a relaxed
JSONPath finds in each. Pure."""
from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import cmp_to_key
from typing import Any

from .goprint import go_type
from .jsonpath import relaxed, values_per_action
from .jsonpath_parser import JSONPathError, parse


_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1, "k": 10 ** 3, "M": 10 ** 6,
           "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18}


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes resource.Quantity (100m, 2Gi, 1e3), None when `text` is not one."""
    m = _QUANTITY.match(text)
    if m is None:
        return None
    suffix = m.group(2) or ""
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else Decimal(_SUFFIX[suffix])
    return Decimal(m.group(1)) * scale


def sort_items(items: list[Any], expression: str) -> list[Any]:
    """kubectl's --sort-by: a sort on the first value of the relaxed JSONPath; items without it, then
    nulls, first; two quantities (100m, 2Gi) by value, other strings by bytes, integers or floats by value;
    anything else (maps, lists, booleans, an integer with a float) is kubectl's unsortable error."""
    template = relaxed(expression)
    try:
        parse(template)
    except JSONPathError as exc:
        raise JSONPathError(f"error parsing jsonpath {template}, {exc}") from None

    def key(item: Any) -> Any:
        values = values_per_action(template, item)
        return values[0][0] if values and values[0] else _ABSENT

    def cmp(x: Any, y: Any) -> int:
        if x is _ABSENT and y is _ABSENT:
            return 0
        return -1 if _less(x, y) else (1 if _less(y, x) else 0)

    keyed = [(key(item), item) for item in items]
    if items and all(value is _ABSENT for value, _ in keyed):
        raise JSONPathError(f"couldn't find any field with path {json.dumps(template)} in the list of objects")
    try:
        keyed.sort(key=cmp_to_key(lambda p, q: cmp(p[0], q[0])))
    except _Unsortable as exc:
        raise JSONPathError(f"Field {template} in *unstructured.Unstructured is an unsortable type: interface, err: "
                            f"{exc}") from None
    return [item for _, item in keyed]


_ABSENT = object()


class _Unsortable(Exception):
    pass


def _less(x: Any, y: Any) -> bool:
    """kubectl's isLess on two values found by --sort-by (sorter.go)."""
    if x is _ABSENT:
        return True
    if y is _ABSENT:
        return False
    if x is None or y is None:
        return x is None and y is not None
    if isinstance(x, (dict, list, bool)):
        raise _Unsortable(f"unsortable type: {go_type(x)}")
    if isinstance(x, str) and isinstance(y, str):
        qx, qy = quantity(x), quantity(y)
        if qx is not None and qy is not None:
            return qx < qy
        return x.encode() < y.encode()
    if type(x) is type(y) and isinstance(x, (int, float)):
        return x < y
    raise _Unsortable("unsortable interface: interface")
