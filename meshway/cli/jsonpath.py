"""kubectl's JSONPath templates (k8s.io/client-go/util/jsonpath), ported: parse, evaluate, print. Pure.

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
from decimal import Decimal
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any

class JSONPathError(ValueError):
    """A template kubectl would refuse to parse or fail to execute; the message is client-go's."""


# ---- the parse tree (client-go's node types) -------------------------------------------------------------
@dataclass
class Text:
    text: str


@dataclass
class Field:
    name: str


@dataclass
class Array:  # [start:end:step]; None: not given; derived_end: `[i]`, the end is i+1
    start: int | None
    end: int | None
    step: int | None
    derived_end: bool = False


@dataclass
class Filter:
    left: "ListNode"
    right: "ListNode"
    op: str


@dataclass
class Wildcard:
    pass


@dataclass
class Recursive:
    pass


@dataclass
class Union:
    parts: list["ListNode"]


@dataclass
class Literal:  # an int, float or bool inside an action
    value: Any


@dataclass
class Identifier:  # range, end (anything else fails at execution, as in kubectl)
    name: str


@dataclass
class ListNode:
    nodes: list[Any] = field(default_factory=list)


_DICT_KEY = re.compile(r"^'([^']*)'$")
_SLICE = re.compile(r"^(-?[\d]*)(:-?[\d]*)?(:-?[\d]*)?$")
_FILTER = re.compile(r"^([^!<>=]+)([!<>=]+)(.+?)$", re.S)


def _is_terminator(ch: str) -> bool:
    return ch in " \t\r\n.,[]$@{}" or ch == ""


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdigit()


def _go_rune(ch: str) -> str:
    return f"U+{ord(ch):04X} {ch!r}".replace('"', "'") if ch.isprintable() else f"U+{ord(ch):04X}"


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v"}


def _unquote(text: str) -> str:
    """Go's strconv.Unquote, after client-go's UnquoteExtend turned '...' into "..."."""
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == text[0] and text[0] == '"':
            raise JSONPathError(f"unquote string {text} error invalid syntax")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1: i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in ("x", "u", "U"):
            n = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2: i + 2 + n]
            if len(digits) != n or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise JSONPathError(f"unquote string {text} error invalid syntax")
            out.append(chr(int(digits, 16)))
            i += 2 + n
        else:
            raise JSONPathError(f"unquote string {text} error invalid syntax")
    return "".join(out)


class _Parser:
    """client-go's jsonpath/parser.go: a rune scanner with `start` (text consumed) and `pos`."""

    def __init__(self, text: str):
        self.input, self.pos, self.start = text, 0, 0
        self.root = ListNode()

    def next(self) -> str:
        if self.pos >= len(self.input):
            self.pos += 1  # so that backup() after eof is symmetric
            return ""
        ch = self.input[self.pos]
        self.pos += 1
        return ch

    def backup(self) -> None:
        self.pos -= 1

    def peek(self) -> str:
        return self.input[self.pos] if self.pos < len(self.input) else ""

    def consume(self) -> str:
        value = self.input[self.start:self.pos]
        self.start = self.pos
        return value

    def parse(self) -> ListNode:
        cur: ListNode | None = self.root
        while cur is not None:  # each step returns where to go on: text (root) or inside an action
            cur = self.parse_text() if cur is self.root else self.parse_inside(cur)
        return self.root

    def parse_text(self) -> ListNode | None:
        while True:
            if self.input.startswith("{", self.pos):
                if self.pos > self.start:
                    self.root.nodes.append(Text(self.consume()))
                self.pos += 1
                self.consume()
                node = ListNode()
                self.root.nodes.append(node)
                return node
            if self.next() == "":
                break
        self.pos = len(self.input)
        if self.pos > self.start:
            self.root.nodes.append(Text(self.consume()))
        return None

    def parse_inside(self, cur: ListNode) -> ListNode | None:
        """One token inside `{...}`; returns the list to go on with (the root after `}`)."""
        rest = self.input[self.pos:]
        if rest.startswith("{"):
            self.pos += 1
            self.consume()
            node = ListNode()
            cur.nodes.append(node)
            return node
        if rest.startswith("}"):
            self.pos += 1
            self.consume()
            return self.root
        if rest.startswith("[?("):
            return self.parse_filter(cur)
        if rest.startswith(".."):
            if cur.nodes and isinstance(cur.nodes[-1], Recursive):
                raise JSONPathError("invalid multiple recursive descent")
            self.pos += 2
            self.consume()
            cur.nodes.append(Recursive())
            return self.parse_field(cur) if _is_alnum(self.peek()) and self.peek() else cur
        ch = self.next()
        if ch == "" or ch in "\r\n":
            raise JSONPathError("unclosed action")
        if ch in " $@":
            self.consume()
            return cur
        if ch == "[":
            return self.parse_array(cur)
        if ch in "\"'":
            return self.parse_quote(cur, ch)
        if ch == ".":
            return self.parse_field(cur)
        if ch in "+-" or ch.isdigit():
            self.backup()
            return self.parse_number(cur)
        if _is_alnum(ch):
            self.backup()
            return self.parse_identifier(cur)
        raise JSONPathError(f"unrecognized character in action: {_go_rune(ch)}")

    def parse_identifier(self, cur: ListNode) -> ListNode:
        while not _is_terminator(self.next()):
            pass
        self.backup()
        value = self.consume()
        if value in ("true", "false"):
            cur.nodes.append(Literal(value == "true"))
        else:
            cur.nodes.append(Identifier(value))
        return cur

    def parse_field(self, cur: ListNode) -> ListNode:
        self.consume()
        while True:  # client-go's advance(): up to the next terminator not escaped with a backslash
            ch = self.next()
            if ch == "\\":
                self.next()
            elif _is_terminator(ch):
                self.backup()
                break
        value = self.consume()
        cur.nodes.append(Wildcard() if value == "*" else Field(value.replace("\\", "")))
        return cur

    def parse_number(self, cur: ListNode) -> ListNode:
        if self.peek() in ("+", "-") and self.peek():
            self.next()
        while True:
            ch = self.next()
            if ch != "." and not (ch and ch.isdigit()):
                self.backup()
                break
        value = self.consume()
        if re.fullmatch(r"[+-]?\d+", value):
            cur.nodes.append(Literal(int(value)))
        elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", value):
            cur.nodes.append(Literal(float(value)))
        else:
            raise JSONPathError(f"cannot parse number {value}")
        return cur

    def parse_quote(self, cur: ListNode, end: str) -> ListNode:
        while True:
            ch = self.next()
            if ch == "" or ch == "\n":
                raise JSONPathError("unterminated quoted string")
            if ch == end and self.input[self.pos - 2] != "\\":
                break
        value = self.consume()
        quoted = value if end == '"' else '"' + value[1:-1].replace('"', '\\"').replace("\\'", "'") + '"'
        cur.nodes.append(Text(_unquote(quoted)))
        return cur

    def parse_array(self, cur: ListNode) -> ListNode:
        while True:
            ch = self.next()
            if ch == "" or ch == "\n":
                raise JSONPathError("unterminated array")
            if ch == "]":
                break
        text = self.consume()[1:-1]
        if text == "*":
            text = ":"
        parts = text.split(",")
        if len(parts) > 1:
            cur.nodes.append(Union([_parse_action(f"[{p.strip(' ')}]") for p in parts]))
            return cur
        key = _DICT_KEY.match(text)
        if key:
            cur.nodes.extend(_parse_action(f".{key.group(1)}").nodes)
            return cur
        m = _SLICE.match(text)
        if not m:
            raise JSONPathError(f"invalid array index {text}")
        values = [m.group(1), m.group(2), m.group(3)]
        params: list[int | None] = [None, None, None]
        derived = False
        for i, v in enumerate(values):
            if v:
                if i > 0:
                    v = v[1:]
                if i > 0 and v == "":
                    continue
                try:
                    params[i] = int(v)
                except ValueError:
                    raise JSONPathError(f"array index {v} is not a number") from None
            elif i == 1:
                params[1], derived = (params[0] or 0) + 1, True
        cur.nodes.append(Array(params[0], params[1], params[2], derived))
        return cur

    def parse_filter(self, cur: ListNode) -> ListNode:
        self.pos += 3
        self.consume()
        begin = end = False
        pair = ""
        while True:
            ch = self.next()
            if ch == "" or ch == "\n":
                raise JSONPathError("unterminated filter")
            if ch in "\"'":
                if not begin:
                    begin, pair = True, ch
                    continue
                if self.input[self.pos - 2] != "\\" and ch == pair:
                    end = True
            elif ch == ")" and begin == end:
                break
        if self.next() != "]":
            raise JSONPathError("unclosed array expect ]")
        text = self.consume()[:-2]
        m = _FILTER.match(text)
        if m is None:
            cur.nodes.append(Filter(_parse_action(text), ListNode(), "exists"))
        else:
            cur.nodes.append(Filter(_parse_action(m.group(1)), _parse_action(m.group(3)), m.group(2)))
        return cur


def _parse_action(text: str) -> ListNode:
    root = _Parser("{" + text + "}").parse()
    return root.nodes[0]


def parse(template: str) -> ListNode:
    """The template's tree: Text nodes and one ListNode per `{...}` action."""
    return _Parser(template).parse()


# ---- evaluation (client-go's jsonpath.go) ----------------------------------------------------------------
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


# ---- printing (Go's fmt and encoding/json) ---------------------------------------------------------------
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
