"""kubectl's JSONPath templates (k8s.io/client-go/util/jsonpath), ported: evaluate and print the tree of
jsonpath_parser, values printed as Go prints them (goprint). Pure.

`render(template, data)` is what `kubectl get -o jsonpath=TEMPLATE` prints for `data` (one object or a
List). The port keeps client-go's parser and evaluator step for step rather than using a general
JSONPath library, because kubectl's dialect differs from the JSONPath of those libraries exactly where
users notice: unquoted keys with `/` and `-` and `\\.` escapes (`{.metadata.labels.app\\.kubernetes\\.io/name}`),
an error (not clamping) for an index or slice out of bounds, `{range}`/`{end}`, text and quoted
literals between actions, `*` over a string's bytes, and Go's printing of the results (JSON for maps
and lists, `%v` for the rest, results of one action joined by a space).
"""
from __future__ import annotations

import json
import re
from typing import Any

from .goprint import _Byte, go_json, go_sprint, go_type
from .jsonpath_parser import (Array, Field, Filter, Identifier, JSONPathError, ListNode, Literal, Recursive, Text,
                              Union, Wildcard, parse)

__all__ = ["JSONPathError", "parse", "relaxed", "render", "values_per_action"]


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())  # Go's map order is random; insertion order is one of its orders
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str):
        return [_Byte(b) for b in value.encode()]
    return []


class _Evaluator:
    def __init__(self, allow_missing: bool):
        self.allow_missing = allow_missing

    def walk(self, values: list[Any], node: Any) -> list[Any]:
        if isinstance(node, ListNode):
            for child in node.nodes:
                values = self.walk(values, child)
            return values
        if isinstance(node, Text):
            return [node.text]
        if isinstance(node, Field):
            return self.field(values, node)
        if isinstance(node, Array):
            return self.array(values, node)
        if isinstance(node, Filter):
            return self.filter(values, node)
        if isinstance(node, Wildcard):
            return [c for v in values if v is not None for c in _children(v)]
        if isinstance(node, Recursive):
            return self.recursive(values)
        if isinstance(node, Union):
            return [r for part in node.parts for r in self.walk(values, part)]
        if isinstance(node, Literal):
            return [node.value]
        if isinstance(node, Identifier):
            if node.name in ("range", "end"):
                return values
            raise JSONPathError(f"unrecognized identifier {node.name}")
        raise JSONPathError(f"unexpected Node {node}")

    def field(self, values: list[Any], node: Field) -> list[Any]:
        if not values:
            return []
        results = [v[node.name] for v in values if isinstance(v, dict) and node.name in v]
        if not results and not self.allow_missing:
            raise JSONPathError(f"{node.name} is not found")
        return results

    def array(self, values: list[Any], node: Array) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if value is None:
                continue
            if not isinstance(value, list):
                raise JSONPathError(f"{go_type(value)} is not array or slice")
            n = len(value)
            start = 0 if node.start is None else node.start
            if start < 0:
                start += n
            end = n if node.end is None else node.end
            if end < 0 or (end == 0 and node.derived_end):
                end += n
            if end == start:
                return results  # asking for zero elements is allowed (and ends the evaluation, as in kubectl)
            if start >= n or start < 0:
                raise JSONPathError(f"array index out of bounds: index {start}, length {n}")
            if end > n or end < 0:
                raise JSONPathError(f"array index out of bounds: index {end - 1}, length {n}")
            if start > end:
                raise JSONPathError(f"starting index {start} is greater than ending index {end}")
            step = 1
            if node.step is not None:
                if node.step <= 0:
                    raise JSONPathError("step must be > 0")
                step = node.step
            results.extend(value[start:end:step])
        return results

    def recursive(self, values: list[Any]) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if value is None:
                continue
            children = _children(value)
            if children:
                results.append(value)
                results.extend(self.recursive(children))
        return results

    def filter(self, values: list[Any], node: Filter) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if not isinstance(value, list):
                raise JSONPathError(f"{go_sprint(value)} is not array or slice and cannot be filtered")
            for item in value:
                if node.op == "exists":
                    try:
                        if self.walk([item], node.left):
                            results.append(item)
                    except JSONPathError:
                        pass
                    continue
                lefts = self.walk([item], node.left)
                if not lefts:
                    continue
                if len(lefts) > 1:
                    raise JSONPathError("can only compare one element at a time")
                rights = self.walk([item], node.right)
                if not rights:
                    continue
                if len(rights) > 1:
                    raise JSONPathError("can only compare one element at a time")
                if _compare(lefts[0], rights[0], node.op):
                    results.append(item)
        return results


def _basic_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _compare(left: Any, right: Any, op: str) -> bool:
    """text/template's eq, ne, lt, le, gt, ge on two JSON values."""
    if op not in ("==", "!=", "<", ">", "<=", ">="):
        raise JSONPathError(f"unrecognized filter operator {op}")
    k1, k2 = _basic_kind(left), _basic_kind(right)
    if op in ("==", "!="):
        if k1 == "other" or k2 == "other":
            if left is None or right is None:
                equal = left is None and right is None
                return equal if op == "==" else not equal
            raise JSONPathError("invalid type for comparison")
        if k1 != k2:
            raise JSONPathError("incompatible types for comparison")
        return (left == right) if op == "==" else (left != right)
    if k1 in ("other", "bool") or k2 in ("other", "bool"):
        raise JSONPathError("invalid type for comparison")
    if k1 != k2:
        raise JSONPathError("incompatible types for comparison")
    return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op]


def _print_results(results: list[Any], as_json: bool) -> str:
    if as_json:
        return go_json(results, indent=True) + "\n"
    out = []
    for value in results:
        if isinstance(value, (dict, list)):
            out.append(go_json(value))
        elif value is None:
            out.append("null")
        else:
            out.append(go_sprint(value))
    return " ".join(out)


def _find(nodes: list[Any], data: Any, ev: _Evaluator, as_json: bool, out: list[str], depth: int = 0) -> int:
    """client-go's FindResults + PrintResults over `nodes` from index 0; returns the index of the `{end}`
    that closed this block (or len(nodes))."""
    i = 0
    while i < len(nodes):
        node = nodes[i]
        results = ev.walk([data], node)
        kind = _block_keyword(node)
        if kind == "end":
            if not depth:
                raise JSONPathError("not in range, nothing to end")
            return i
        if kind == "range":
            body = nodes[i + 1:]
            end = None
            for value in results or [None]:
                sink: list[str] = out if results else []
                end = _find(body, value, ev, as_json, sink, depth + 1)
            i += 1 + (end if end is not None else len(body)) + 1
            continue
        out.append(_print_results(results, as_json))
        i += 1
    return i


def _block_keyword(node: Any) -> str | None:
    if isinstance(node, ListNode) and node.nodes and isinstance(node.nodes[0], Identifier):
        if node.nodes[0].name in ("range", "end"):
            return node.nodes[0].name
    return None


def render(template: str, data: Any, allow_missing: bool = True, as_json: bool = False) -> str:
    """What kubectl prints for `-o jsonpath=TEMPLATE` (or jsonpath-as-json) on `data`.

    Raises JSONPathError with kubectl's message (`error parsing jsonpath ...` / `error executing
    jsonpath ...`)."""
    try:
        tree = parse(template)
    except JSONPathError as exc:
        raise JSONPathError(f"error parsing jsonpath {template}, {exc}") from None
    out: list[str] = []
    try:
        _find(tree.nodes, data, _Evaluator(allow_missing), as_json, out)
    except JSONPathError as exc:
        raise JSONPathError(f"error executing jsonpath {json.dumps(template, ensure_ascii=False)}: Error executing "
                            f"template: {exc}.") from None
    return "".join(out)


def values_per_action(template: str, data: Any) -> list[list[Any]]:
    """client-go's FindResults with missing keys allowed: the values of each top-level action (and text)
    of `template` on `data` (custom-columns, --sort-by)."""
    ev = _Evaluator(allow_missing=True)
    return [ev.walk([data], node) for node in parse(template).nodes]


RELAXED = re.compile(r"^\{\.?([^{}]+)\}$|^\.?([^{}]+)$")


def relaxed(expression: str) -> str:
    """kubectl's RelaxedJSONPathExpression: `a.b`, `.a.b`, `{a.b}` and `{.a.b}` all mean `{.a.b}`."""
    if not expression:
        return expression
    m = RELAXED.match(expression)
    if m is None:
        raise JSONPathError("unexpected path string, expected a 'name1.name2' or '.name1.name2' or '{name1.name2}' "
                            "or '{.name1.name2}'")
    return "{." + (m.group(1) or m.group(2)) + "}"
