"""Label selectors: the structured LabelSelector and kubectl's `-l` string form."""
from __future__ import annotations

import re

from .meta import LabelSelector, LabelSelectorRequirement, check_label_key, check_label_value


def requirement_matches(req: LabelSelectorRequirement, labels: dict[str, str]) -> bool:
    if req.operator == "In":
        return req.key in labels and labels[req.key] in req.values
    if req.operator == "NotIn":
        return labels.get(req.key) not in req.values
    if req.operator == "Exists":
        return req.key in labels
    return req.key not in labels


def selector_matches(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """Kubernetes semantics: every matchLabels pair and every expression must hold (empty matches all)."""
    if any(labels.get(k) != v for k, v in selector.matchLabels.items()):
        return False
    return all(requirement_matches(r, labels) for r in selector.matchExpressions)


_SET_RE = re.compile(r"^\s*(!)?\s*([^\s!=,()]+)\s*(?:(in|notin)\s*\(([^)]*)\)|(==|=|!=)\s*([^\s,()]*))?\s*$")


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def parse_selector(text: str) -> LabelSelector:
    """Parse kubectl's selector syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h`."""
    reqs: list[LabelSelectorRequirement] = []
    for part in _split_top_level(text):
        m = _SET_RE.match(part)
        if not m:
            raise ValueError(f"unable to parse requirement: {part.strip()!r}")
        neg, key, setop, setvals, op, val = m.groups()
        check_label_key(key)
        if neg:
            if setop or op:
                raise ValueError(f"unable to parse requirement: {part.strip()!r}")
            reqs.append(LabelSelectorRequirement(key=key, operator="DoesNotExist"))
        elif setop:
            values = [v.strip() for v in setvals.split(",") if v.strip()]
            for v in values:
                check_label_value(v)
            reqs.append(LabelSelectorRequirement(key=key, operator="In" if setop == "in" else "NotIn", values=values))
        elif op:
            check_label_value(val)
            reqs.append(LabelSelectorRequirement(key=key, operator="NotIn" if op == "!=" else "In", values=[val]))
        else:
            reqs.append(LabelSelectorRequirement(key=key, operator="Exists"))
    return LabelSelector(matchExpressions=reqs)
