"""Tracing from the Telemetry API (telemetry.istio.io) for waypoint chains (pure).

Which tracing applies (Istio's `Telemetries.Tracing`, server side, as a waypoint is an inbound
listener): start from `meshConfig.defaultProviders.tracing`, then apply the `spec.tracing` entries of
the root namespace's mesh-wide Telemetry, the waypoint namespace's namespace-wide one, and those
whose `targetRefs` name the waypoint (Gateway) or the service, in that order; each entry overrides
only the fields it sets. No provider in the end, or `disableSpanReporting`, means no tracing.

The HCM `tracing` block follows pilot/pkg/networking/core/tracing.go: Zipkin (v2 JSON to
`http://HOST/api/v2/spans`, 128-bit trace ids, B3 or B3 + W3C propagation) or OpenTelemetry (OTLP
over HTTP or gRPC, W3C), collector cluster `outbound|PORT||HOST`, random sampling from the Telemetry
or the mesh default (1%), Istio's tags, no upstream span: the waypoint's one SERVER span is named by
the route decorator (`reviews.default.svc.cluster.local:9080/*`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from .. import labels as L
from ..mesh.view import MeshView
from ..model.durations import parse_duration
from ..model.istio import CustomTag, Telemetry
from ..model.meshconfig import ExtensionProvider, MeshConfig
from .build_provider_cluster import ProviderCluster, build_provider_cluster
from .protos import typed
from .proxy import Proxy

Body = dict[str, Any]
DEFAULT_SAMPLING = 1.0  # PILOT_TRACE_SAMPLING
ZIPKIN_PATH = "/api/v2/spans"
RBAC_FILTER = "envoy.filters.http.rbac"
DRY_RUN_TAGS = {  # Istio's optional policy tags: set only when a dry-run AuthorizationPolicy ran
    "istio.authorization.dry_run.allow_policy.name": "istio_dry_run_allow_shadow_effective_policy_id",
    "istio.authorization.dry_run.allow_policy.result": "istio_dry_run_allow_shadow_engine_result",
    "istio.authorization.dry_run.deny_policy.name": "istio_dry_run_deny_shadow_effective_policy_id",
    "istio.authorization.dry_run.deny_policy.result": "istio_dry_run_deny_shadow_engine_result",
}


@dataclass(frozen=True)
class TracingDecision:
    """The tracing in force for one service on one waypoint, and the Telemetry that decided it."""

    provider: str | None
    disabled: bool = False
    sampling: float | None = None  # randomSamplingPercentage; None: the mesh default
    custom_tags: Mapping[str, CustomTag] = field(default_factory=dict)
    istio_tags: bool = True
    propagate: bool = True
    sources: tuple[str, ...] = ()  # "ns/name" of each Telemetry applied, in order


def _refs(t: Telemetry) -> list:
    return list(t.spec.targetRefs or []) + ([t.spec.targetRef] if t.spec.targetRef else [])


def _order(t: Telemetry) -> tuple[str, str, str]:
    return (t.metadata.creationTimestamp or "", t.namespace, t.name)


def find_applicable_telemetries(telemetries: Iterable[Telemetry], waypoint_ns: str, waypoint: str,
                                service_ns: str, service: str) -> list[Telemetry]:
    """Root namespace-wide, waypoint namespace-wide (the oldest of each), then every Telemetry whose
    targetRefs name the waypoint Gateway or the service, oldest first."""
    ordered = sorted(telemetries, key=_order)
    wide = [t for t in ordered if not _refs(t) and not t.spec.selector]
    out = [next((t for t in wide if t.namespace == ns), None) for ns in dict.fromkeys((L.ROOT_NAMESPACE, waypoint_ns))]
    for t in ordered:
        for ref in _refs(t):
            ns = ref.namespace or t.namespace
            if (ref.kind == "Gateway" and (ns, ref.name) == (waypoint_ns, waypoint)) or \
                    (ref.kind in ("Service", "ServiceEntry") and (ns, ref.name) == (service_ns, service)):
                out.append(t)
                break
    return [t for t in out if t is not None]


def find_tracing(telemetries: Iterable[Telemetry], default_providers: list[str] | None, waypoint_ns: str,
                 waypoint: str, service_ns: str, service: str) -> TracingDecision | None:
    """None when neither a Telemetry nor `defaultProviders.tracing` configures tracing."""
    applied = [t for t in find_applicable_telemetries(telemetries, waypoint_ns, waypoint, service_ns, service)
               if t.spec.tracing]
    if not applied and not default_providers:
        return None
    d = TracingDecision(provider=(default_providers or [None])[0])
    for t in applied:
        for entry in t.spec.tracing or []:
            if entry.match and entry.match.mode == "CLIENT":  # a waypoint only has server spans
                continue
            changes: dict[str, Any] = {}
            if entry.providers:
                changes["provider"] = entry.providers[0].name  # one provider per mode: the first
            if entry.disableSpanReporting is not None:
                changes["disabled"] = entry.disableSpanReporting
            if entry.customTags is not None:
                changes["custom_tags"] = dict(entry.customTags)
            if entry.randomSamplingPercentage is not None:
                changes["sampling"] = entry.randomSamplingPercentage
            if entry.enableIstioTags is not None:
                changes["istio_tags"] = entry.enableIstioTags
            if entry.disableContextPropagation is not None:
                changes["propagate"] = not entry.disableContextPropagation
            d = replace(d, **changes)
        d = replace(d, sources=d.sources + (f"{t.namespace}/{t.name}",))
    return d


def find_default_sampling(mesh: MeshConfig) -> float:
    """`defaultConfig.tracing.sampling` (over 100 counts as 1), else PILOT_TRACE_SAMPLING's 1%."""
    tracing = ((mesh.model_extra or {}).get("defaultConfig") or {}).get("tracing") or {}
    sampling = tracing.get("sampling") if isinstance(tracing, dict) else None
    if not isinstance(sampling, (int, float)) or sampling == 0:
        return DEFAULT_SAMPLING
    return 1.0 if sampling > 100 else float(sampling)


def _seconds(text: str | None, default: str) -> str:
    return f"{parse_duration(text):.9g}s" if text else default


def _headers(headers: list[dict] | None, notes: list[str]) -> list[Body]:
    out = []
    for h in headers or []:
        if "value" not in h:
            notes.append(f"collector header {h.get('name')!r}: only `value` is supported (not envName); left out")
            continue
        out.append({"header": {"key": h["name"], "value": h["value"]}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"})
    return out


def build_tracer(provider: ExtensionProvider, collector: ProviderCluster, service_cluster: str,
                 notes: list[str]) -> Body:
    """The HCM `tracing.provider` for a zipkin or opentelemetry extension provider."""
    name = collector.cluster["name"]
    if provider.zipkin:
        z = provider.zipkin
        service: Body = {"http_uri": {"uri": f"http://{collector.hostname}{z.path or ZIPKIN_PATH}", "cluster": name,
                                      "timeout": _seconds(z.timeout, "5s")}}
        if z.headers:
            service["request_headers_to_add"] = _headers(z.headers, notes)
        return {"name": "envoy.tracers.zipkin", "typed_config": typed(
            "envoy.config.trace.v3.ZipkinConfig", collector_endpoint_version="HTTP_JSON",
            trace_id_128bit=not z.enable64bitTraceId, shared_span_context=False, collector_service=service,
            trace_context_option=z.traceContextOption or "USE_B3")}
    otel = provider.opentelemetry
    config: Body = {"service_name": service_cluster}
    if otel.http is not None:
        path = "/" + (otel.http.path or "").lstrip("/")
        config["http_service"] = {"http_uri": {"uri": f"{collector.hostname}{path}", "cluster": name,
                                               "timeout": _seconds(otel.http.timeout, "5s")}}
        if otel.http.headers:
            config["http_service"]["request_headers_to_add"] = _headers(otel.http.headers, notes)
    else:
        grpc = otel.grpc or {}
        config["grpc_service"] = {"envoy_grpc": {"cluster_name": name, "authority": collector.hostname}}
        if grpc.get("timeout"):
            config["grpc_service"]["timeout"] = _seconds(grpc["timeout"], "")
    return {"name": "envoy.tracers.opentelemetry",
            "typed_config": typed("envoy.config.trace.v3.OpenTelemetryConfig", **config)}


def build_istio_tags(proxy: Proxy) -> list[Body]:
    """Istio's service tags (literals about the proxy) and its dry-run policy tags."""
    literals = {"istio.canonical_revision": "latest", "istio.canonical_service": proxy.waypoint,
                "istio.mesh_id": proxy.trust_domain, "istio.namespace": proxy.namespace,
                "istio.cluster_id": "Kubernetes"}
    tags = [{"tag": k, "literal": {"value": v}} for k, v in literals.items()]
    tags += [{"tag": k, "metadata": {"kind": {"request": {}},
                                     "metadata_key": {"key": RBAC_FILTER, "path": [{"key": p}]}}}
             for k, p in DRY_RUN_TAGS.items()]
    return tags


def build_custom_tag(name: str, tag: CustomTag) -> Body:
    if tag.literal:
        return {"tag": name, "literal": {"value": tag.literal.value}}
    if tag.formatter:
        return {"tag": name, "value": tag.formatter.value}
    source = tag.environment or tag.header
    kind = "environment" if tag.environment else "request_header"
    return {"tag": name, kind: {"name": source.name, **({"default_value": source.defaultValue}
                                                          if source.defaultValue is not None else {})}}


def build_hcm_tracing(decision: TracingDecision, tracer: Body, default_sampling: float, proxy: Proxy,
                      max_tag_length: int | None) -> Body:
    tags = build_istio_tags(proxy) if decision.istio_tags else []
    tags += [build_custom_tag(k, v) for k, v in decision.custom_tags.items()]
    sampling = decision.sampling if decision.sampling is not None else default_sampling
    out: Body = {"client_sampling": {"value": 100.0}, "random_sampling": {"value": sampling},
                 "overall_sampling": {"value": 100.0}, "custom_tags": sorted(tags, key=lambda t: t["tag"]),
                 "provider": tracer}
    if max_tag_length:
        out["max_path_tag_length"] = max_tag_length
    return out


def build_tracing(decision: TracingDecision | None, mesh: MeshConfig, view: MeshView, proxy: Proxy,
                  dial: Callable[[str], str], notes: list[str]) -> tuple[Body | None, ProviderCluster | None]:
    """The HCM `tracing` block and the collector's cluster, or (None, None) with a note saying why."""
    if decision is None or decision.disabled:
        return None, None
    if decision.provider is None:
        notes.append("tracing is configured but names no provider (set providers, or "
                     "meshConfig.defaultProviders.tracing); no spans are reported")
        return None, None
    provider = next((p for p in mesh.extensionProviders or [] if p.name.lower() == decision.provider.lower()), None)
    if provider is None:
        notes.append(f"tracing provider {decision.provider!r} is not defined in meshConfig.extensionProviders; "
                     "no spans are reported")
        return None, None
    if provider.type not in ("zipkin", "opentelemetry"):
        notes.append(f"tracing provider {provider.name!r} ({provider.type}) does not support tracing here "
                     "(supported: zipkin, opentelemetry); no spans are reported")
        return None, None
    settings = provider.zipkin or provider.opentelemetry
    grpc = provider.opentelemetry is not None and provider.opentelemetry.http is None
    try:
        collector = build_provider_cluster(view, settings.service, settings.port, dial, http2=grpc)
    except LookupError as exc:
        notes.append(f"tracing provider {provider.name!r}: {exc}; no spans are reported")
        return None, None
    if not decision.propagate:
        notes.append("disableContextPropagation is not supported by Envoy 1.40 (no no_context_propagation); "
                     "trace headers are still propagated")
    tracer = build_tracer(provider, collector, f"{proxy.service_account}.{proxy.namespace}", notes)
    return build_hcm_tracing(decision, tracer, find_default_sampling(mesh), proxy, settings.maxTagLength), collector
