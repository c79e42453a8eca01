"""The parser of kubectl's JSONPath templates: client-go's jsonpath/parser.go, ported step for step
(its node types, its scanner, its error messages). Pure."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
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
