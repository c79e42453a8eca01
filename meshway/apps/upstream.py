"""Calls from one app to another (productpage -> details/reviews/ratings, reviews -> ratings):
plain HTTP/1.1 to the service name, a short timeout, and the tracing and user headers that Istio's
bookinfo sample propagates. A failure is a value (`Fetched.error`), never an exception."""
from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .server import Request

# The headers bookinfo's productpage forwards (tracing: W3C, B3, Datadog, Lightstep, Cloud Trace,
# SkyWalking, OpenCensus; plus the end user for header-based routing).
PROPAGATED_HEADERS = (
    "x-request-id", "traceparent", "tracestate",
    "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
    "x-ot-span-context", "x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority",
    "x-cloud-trace-context", "grpc-trace-bin", "sw8", "end-user", "user-agent", "cookie", "authorization",
)


@dataclass(frozen=True)
class Fetched:
    url: str
    status: int | None = None  # None when no HTTP response came back
    body: Any = None  # parsed JSON, or the text when it is not JSON
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def build_forward_headers(req: Request, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {name: value for name in PROPAGATED_HEADERS if (value := req.header(name)) is not None}
    return {**headers, **(extra or {})}


def _get(url: str, headers: Mapping[str, str], timeout: float) -> Fetched:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=dict(headers))
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return Fetched(url, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    text = raw.decode(errors="replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return Fetched(url, resp.status, body)


async def fetch_json(url: str, headers: Mapping[str, str], timeout: float) -> Fetched:
    """GET `url` in a worker thread; slow or unreachable upstreams come back as `error`."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_get, url, headers, timeout), timeout + 0.5)
    except asyncio.TimeoutError:
        return Fetched(url, error=f"timed out after {timeout:g}s")
