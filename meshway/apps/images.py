"""Which built-in app stands in for a container image (pure). Images are never pulled: Istio's
bookinfo images run `meshway.apps.bookinfo`, echo/httpbin-like images run `meshway.apps.echo` on
the image's usual port, Zipkin / OpenTelemetry Collector / Jaeger images run `meshway.apps.collector`,
curl/sleep images run `meshway.apps.sleep`, Istio's ext-authz sample `meshway.apps.extauthz`; any
other image needs the container to give a `command`."""
from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

BOOKINFO_IMAGE = re.compile(r"(?:istio/)?examples-bookinfo-(productpage|details|reviews|ratings)-(v\d+)")
HELLOWORLD_IMAGE = re.compile(r"istio/examples-helloworld-(v\d+)")
ECHO_IMAGES = {  # repository -> the port the real image listens on
    "echo": 8080, "meshway/echo": 8080, "hashicorp/http-echo": 5678, "kennethreitz/httpbin": 80,
    "mccutchen/go-httpbin": 8080, "kong/httpbin": 80, "istio/httpbin": 80, "jmalloc/echo-server": 8080,
    "ealen/echo-server": 80, "mendhak/http-https-echo": 8080,
}
COLLECTOR_IMAGES = {  # repository -> (HTTP ports: Zipkin and OTLP/HTTP, gRPC ports: OTLP/gRPC), as the real images
    "openzipkin/zipkin": ("9411", ""), "openzipkin/zipkin-slim": ("9411", ""),
    "otel/opentelemetry-collector": ("4318 9411", "4317"),
    "otel/opentelemetry-collector-contrib": ("4318 9411", "4317"),
    "jaegertracing/all-in-one": ("4318 9411", "4317"), "jaegertracing/jaeger": ("4318 9411", "4317"),
}
EXTAUTHZ_IMAGES = frozenset({"istio-testing/ext-authz", "istio/ext-authz"})  # Istio's samples/extauthz
SLEEP_IMAGES = frozenset({"curlimages/curl", "curl", "sleep", "meshway/sleep", "istio/sleep", "istio/curl",
                          "governmentpaas/curl-ssl", "pstauffer/curl"})


@dataclass(frozen=True)
class AppCommand:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def find_repository(image: str) -> str:
    """`docker.io/istio/examples-bookinfo-details-v1:1.20.1` -> `istio/examples-bookinfo-details-v1`:
    no registry host, tag or digest; Docker Hub's `library/` dropped."""
    name = image.strip().split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:  # a tag (a colon before the last slash is a registry port)
        name = name.rsplit(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts).lower()


def _app(module: str, python: str, env: Mapping[str, str]) -> AppCommand:
    # Unbuffered, so that `meshway logs` shows each line as it is written; -P: the working directory
    # is not put on sys.path, so a `meshway/` folder there never shadows the package.
    return AppCommand((python, "-P", "-u", "-m", f"meshway.apps.{module}"), {"PYTHONUNBUFFERED": "1", **env})


def resolve_image(image: str | None, python: str = sys.executable) -> AppCommand | None:
    if not image:
        return None
    repo = find_repository(image)
    if m := BOOKINFO_IMAGE.fullmatch(repo):
        return _app("bookinfo", python, {"BOOKINFO_SERVICE": m.group(1), "BOOKINFO_VERSION": m.group(2)})
    if m := HELLOWORLD_IMAGE.fullmatch(repo):
        return _app("echo", python, {"PORT": "5000", "VERSION": m.group(1)})
    if repo in ECHO_IMAGES:
        return _app("echo", python, {"PORT": str(ECHO_IMAGES[repo])})
    if repo in COLLECTOR_IMAGES:
        http, grpc = COLLECTOR_IMAGES[repo]
        return _app("collector", python, {"PORTS": http, "GRPC_PORTS": grpc})
    if repo in SLEEP_IMAGES:
        return _app("sleep", python, {})
    if repo in EXTAUTHZ_IMAGES:
        return _app("extauthz", python, {})
    return None
