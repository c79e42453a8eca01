"""Input bounds as Kubernetes applies them, checked before anything large is built.

- YAML alias expansion: go-yaml's rule (gopkg.in/yaml.v2 >= 2.2.4 and v3, used by kubectl through
  sigs.k8s.io/yaml; the CVE-2019-11253 fix): count every node a decode visits and every node it
  visits inside an alias; once more than 100 aliased nodes and 1,000 nodes are decoded, refuse the
  document when the aliased share exceeds 99% (up to 400,000 decodes), falling linearly to 10% at
  4,000,000. Counted on the parser's events without expanding anything, so a "billion laughs" costs
  what its bytes cost.
- Nesting depth: MAX_DEPTH levels (go-yaml allows 10,000; the store, the model and the translators
  walk objects recursively in Python, so the bound is lower and is also applied to aliases' depth).
- Object size: 3 MiB serialized (the API server's request body limit).
- metadata.annotations: 256 KiB total of keys and values (apimachinery's TotalAnnotationSizeLimitB).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import yaml

MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_ANNOTATIONS_BYTES = 256 * 1024
MAX_DEPTH = 100

_ALIAS_LOW, _ALIAS_HIGH = 400_000, 4_000_000

TOO_LARGE = f"Request entity too large: limit is {MAX_REQUEST_BYTES}"
ANNOTATIONS_TOO_LONG = f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"
EXCESSIVE_ALIASING = "yaml: document contains excessive aliasing"
TOO_DEEP = f"exceeded max depth of {MAX_DEPTH}"


class LimitError(ValueError):
    """A bound was exceeded; `document` is the 1-based YAML document it was found in."""

    def __init__(self, message: str, document: int | None = None, mark: Any = None):
        super().__init__(message)
        self.message, self.document, self.mark = message, document, mark


def allowed_alias_ratio(decodes: int) -> float:
    """go-yaml's allowedAliasRatio."""
    if decodes <= _ALIAS_LOW:
        return 0.99
    if decodes >= _ALIAS_HIGH:
        return 0.10
    return 0.99 - 0.89 * (decodes - _ALIAS_LOW) / (_ALIAS_HIGH - _ALIAS_LOW)


def detect_excessive_aliasing(decodes: int, aliased: int) -> bool:
    return aliased > 100 and decodes > 1000 and aliased / decodes > allowed_alias_ratio(decodes)


class _Frame:
    __slots__ = ("anchor", "size", "height")

    def __init__(self, anchor: str | None):
        self.anchor, self.size, self.height = anchor, 1, 1


def check_yaml_events(events: Iterable[yaml.Event]) -> None:
    """Raise LimitError for a document whose alias expansion or nesting is out of bounds.

    Per document: `decodes` is the number of nodes the decoded document has (every alias counted as
    itself plus the expanded size of its anchor), `aliased` the part that comes from aliases."""
    import yaml  # here: the store imports the bounds above, and a read (`meshway get`) parses no YAML

    document = 0
    stack: list[_Frame] = []
    anchors: dict[str, tuple[int, int]] = {}  # name -> (expanded size, height)
    decodes = aliased = 0

    def add(size: int, height: int) -> None:
        if stack:
            top = stack[-1]
            top.size += size
            top.height = max(top.height, height + 1)

    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            document += 1
            stack, anchors, decodes, aliased = [], {}, 0, 0
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            decodes += 1
            stack.append(_Frame(event.anchor))
            if len(stack) > MAX_DEPTH:
                raise LimitError(f"nesting too deep: {TOO_DEEP}", document, event.start_mark)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frame = stack.pop()
            if frame.anchor is not None:
                anchors[frame.anchor] = (frame.size, frame.height)
            add(frame.size, frame.height)
        elif isinstance(event, yaml.ScalarEvent):
            decodes += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 1)
            add(1, 1)
        elif isinstance(event, yaml.AliasEvent):
            if any(f.anchor == event.anchor for f in stack):
                raise LimitError(f"yaml: anchor '{event.anchor}' value contains itself", document, event.start_mark)
            if event.anchor not in anchors:
                continue  # the composer reports the undefined alias with its position
            size, height = anchors[event.anchor]
            decodes += 1 + size
            aliased += size
            if detect_excessive_aliasing(decodes, aliased):
                raise LimitError(EXCESSIVE_ALIASING, document, event.start_mark)
            if len(stack) + height > MAX_DEPTH:
                raise LimitError(f"nesting too deep (through alias *{event.anchor}): {TOO_DEEP}", document,
                                 event.start_mark)
            add(1 + size, height)


def find_depth_over(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when a decoded value nests deeper than `limit` mappings/lists (iterative: no recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def annotations_size(annotations: dict[Any, Any]) -> int:
    """apimachinery's ValidateAnnotationsSize: the bytes of every key and value."""
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
