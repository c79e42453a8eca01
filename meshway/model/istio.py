"""Istio kinds: ServiceEntry, VirtualService, DestinationRule, EnvoyFilter (networking.istio.io),
AuthorizationPolicy, RequestAuthentication and PeerAuthentication (security.istio.io), with the
field names and enums of istio/api."""
from __future__ import annotations

import json
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from typing_extensions import Annotated

from .durations import Duration
from .meta import Port, Resource, Strict

Weight = Annotated[int, Field(ge=0)]


class StringMatch(Strict):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "StringMatch":
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) > 1:
            raise ValueError("only one of exact, prefix or regex may be set")
        return self


class PortSelector(Strict):
    number: Port


class Destination(Strict):
    host: Annotated[str, Field(min_length=1)]
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(Strict):
    set: dict[str, str] | None = None
    add: dict[str, str] | None = None
    remove: list[str] | None = None


class Headers(Strict):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPMatchRequest(Strict):
    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] | None = None
    port: Port | None = None
    sourceLabels: dict[str, str] | None = None
    gateways: list[str] | None = None
    queryParams: dict[str, StringMatch] | None = None
    ignoreUriCase: bool | None = None
    withoutHeaders: dict[str, StringMatch] | None = None
    sourceNamespace: str | None = None
    statPrefix: str | None = None


class HTTPRouteDestination(Strict):
    destination: Destination
    weight: Weight | None = None
    headers: Headers | None = None


class RouteDestination(Strict):
    destination: Destination
    weight: Weight | None = None


class HTTPRedirect(Strict):
    uri: str | None = None
    authority: str | None = None
    port: Port | None = None
    derivePort: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirectCode: Annotated[int, Field(ge=300, le=399)] | None = None


class HTTPBody(Strict):
    string: str | None = None
    bytes: str | None = None


class HTTPDirectResponse(Strict):
    status: Annotated[int, Field(ge=200, le=599)]
    body: HTTPBody | None = None


class RegexRewrite(Strict):
    match: str
    rewrite: str


class HTTPRewrite(Strict):
    uri: str | None = None
    authority: str | None = None
    uriRegexRewrite: RegexRewrite | None = None


class HTTPRetry(Strict):
    attempts: Annotated[int, Field(ge=0)] | None = None
    perTryTimeout: Duration | None = None
    retryOn: str | None = None
    retryRemoteLocalities: bool | None = None
    retryIgnorePreviousHosts: bool | None = None
    backoff: Duration | None = None


class Percent(Strict):
    value: Annotated[float, Field(ge=0, le=100)]


class FaultDelay(Strict):
    fixedDelay: Duration | None = None
    exponentialDelay: Duration | None = None
    percentage: Percent | None = None
    percent: Annotated[int, Field(ge=0, le=100)] | None = None


class FaultAbort(Strict):
    httpStatus: Annotated[int, Field(ge=200, le=599)] | None = None
    grpcStatus: str | None = None
    http2Error: str | None = None
    percentage: Percent | None = None


class HTTPFaultInjection(Strict):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class HTTPMirrorPolicy(Strict):
    destination: Destination
    percentage: Percent | None = None


class CorsPolicy(Strict):
    allowOrigins: list[StringMatch] | None = None
    allowOrigin: list[str] | None = None
    allowMethods: list[str] | None = None
    allowHeaders: list[str] | None = None
    exposeHeaders: list[str] | None = None
    maxAge: Duration | None = None
    allowCredentials: bool | None = None
    unmatchedPreflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None


class HTTPRoute(Strict):
    name: str | None = None
    match: list[HTTPMatchRequest] | None = None
    route: list[HTTPRouteDestination] | None = None
    redirect: HTTPRedirect | None = None
    directResponse: HTTPDirectResponse | None = None
    delegate: dict[str, str] | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] | None = None
    mirrorPercentage: Percent | None = None
    mirrorPercent: int | None = None
    corsPolicy: CorsPolicy | None = None
    headers: Headers | None = None

    @model_validator(mode="after")
    def _action(self) -> "HTTPRoute":
        actions = [a for a in (self.route, self.redirect, self.directResponse, self.delegate) if a]
        if len(actions) != 1:
            raise ValueError("exactly one of route, redirect, directResponse or delegate must be set")
        return self


class L4MatchAttributes(Strict):
    destinationSubnets: list[str] | None = None
    port: Port | None = None
    sourceLabels: dict[str, str] | None = None
    gateways: list[str] | None = None
    sourceNamespace: str | None = None


class TLSMatchAttributes(L4MatchAttributes):
    sniHosts: Annotated[list[str], Field(min_length=1)]


class TCPRoute(Strict):
    match: list[L4MatchAttributes] | None = None
    route: list[RouteDestination] = Field(default_factory=list)


class TLSRoute(Strict):
    match: Annotated[list[TLSMatchAttributes], Field(min_length=1)]
    route: list[RouteDestination] = Field(default_factory=list)


class VirtualServiceSpec(Strict):
    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] | None = None
    http: list[HTTPRoute] | None = None
    tls: list[TLSRoute] | None = None
    tcp: list[TCPRoute] | None = None
    exportTo: list[str] | None = None

    @model_validator(mode="after")
    def _hosts(self) -> "VirtualServiceSpec":
        if not self.hosts:
            raise ValueError("hosts: Required value: virtual service must have at least one host")
        return self


class VirtualService(Resource):
    kind: Literal["VirtualService"]
    spec: VirtualServiceSpec


class ConsistentHash(Strict):
    httpHeaderName: str | None = None
    httpCookie: dict[str, Any] | None = None
    useSourceIp: bool | None = None
    httpQueryParameterName: str | None = None
    ringHash: dict[str, Any] | None = None
    maglev: dict[str, Any] | None = None
    minimumRingSize: int | None = None


class LoadBalancerSettings(Strict):
    simple: Literal["UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN"] | None = None
    consistentHash: ConsistentHash | None = None
    localityLbSetting: dict[str, Any] | None = None
    warmupDurationSecs: Duration | None = None
    warmup: dict[str, Any] | None = None


class TCPSettings(Strict):
    maxConnections: int | None = None
    connectTimeout: Duration | None = None
    tcpKeepalive: dict[str, Any] | None = None
    maxConnectionDuration: Duration | None = None
    idleTimeout: Duration | None = None


class HTTPSettings(Strict):
    http1MaxPendingRequests: int | None = None
    http2MaxRequests: int | None = None
    maxRequestsPerConnection: int | None = None
    maxRetries: int | None = None
    idleTimeout: Duration | None = None
    h2UpgradePolicy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    useClientProtocol: bool | None = None
    maxConcurrentStreams: int | None = None


class ConnectionPoolSettings(Strict):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(Strict):
    splitExternalLocalOriginErrors: bool | None = None
    consecutiveLocalOriginFailures: int | None = None
    consecutiveGatewayErrors: int | None = None
    consecutive5xxErrors: int | None = None
    consecutiveErrors: int | None = None
    interval: Duration | None = None
    baseEjectionTime: Duration | None = None
    maxEjectionPercent: Annotated[int, Field(ge=0, le=100)] | None = None
    minHealthPercent: Annotated[int, Field(ge=0, le=100)] | None = None


class ClientTLSSettings(Strict):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    clientCertificate: str | None = None
    privateKey: str | None = None
    caCertificates: str | None = None
    credentialName: str | None = None
    subjectAltNames: list[str] | None = None
    sni: str | None = None
    insecureSkipVerify: bool | None = None
    caCrl: str | None = None


class PortTrafficPolicy(Strict):
    port: PortSelector | None = None
    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(Strict):
    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    portLevelSettings: list[PortTrafficPolicy] | None = None
    tunnel: dict[str, Any] | None = None
    proxyProtocol: dict[str, Any] | None = None
    retryBudget: dict[str, Any] | None = None


class Subset(Strict):
    name: Annotated[str, Field(min_length=1)]
    labels: dict[str, str] | None = None
    trafficPolicy: TrafficPolicy | None = None


class WorkloadSelector(Strict):
    matchLabels: dict[str, str] = Field(default_factory=dict)


class DestinationRuleSpec(Strict):
    host: Annotated[str, Field(min_length=1)]
    trafficPolicy: TrafficPolicy | None = None
    subsets: list[Subset] | None = None
    exportTo: list[str] | None = None
    workloadSelector: WorkloadSelector | None = None

    @model_validator(mode="after")
    def _unique_subsets(self) -> "DestinationRuleSpec":
        names = [s.name for s in self.subsets or []]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"subsets[{i}].name: Duplicate value: {name!r}")
        return self


class DestinationRule(Resource):
    kind: Literal["DestinationRule"]
    spec: DestinationRuleSpec


class ServiceEntryPort(Strict):
    number: Port
    protocol: str | None = None
    name: Annotated[str, Field(min_length=1)]
    targetPort: Port | None = None


class WorkloadEntrySpec(Strict):
    address: str | None = None
    ports: dict[str, Port] | None = None
    labels: dict[str, str] | None = None
    network: str | None = None
    locality: str | None = None
    weight: int | None = None
    serviceAccount: str | None = None


class ServiceEntrySpec(Strict):
    hosts: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    addresses: list[str] | None = None
    ports: list[ServiceEntryPort] | None = None
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] = "NONE"
    endpoints: list[WorkloadEntrySpec] | None = None
    workloadSelector: WorkloadSelector | None = None
    exportTo: list[str] | None = None
    subjectAltNames: list[str] | None = None
    trafficDistribution: str | None = None

    @model_validator(mode="after")
    def _ports(self) -> "ServiceEntrySpec":
        seen: set[int] = set()
        for i, port in enumerate(self.ports or []):
            if port.number in seen:
                raise ValueError(f"ports[{i}].number: Duplicate value: port number {port.number} is already defined")
            seen.add(port.number)
        return self


class ServiceEntry(Resource):
    kind: Literal["ServiceEntry"]
    spec: ServiceEntrySpec


class PolicyTargetReference(Strict):
    group: str | None = None
    kind: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    namespace: str | None = None


class Source(Strict):
    principals: list[str] | None = None
    notPrincipals: list[str] | None = None
    requestPrincipals: list[str] | None = None
    notRequestPrincipals: list[str] | None = None
    namespaces: list[str] | None = None
    notNamespaces: list[str] | None = None
    serviceAccounts: list[str] | None = None
    notServiceAccounts: list[str] | None = None
    ipBlocks: list[str] | None = None
    notIpBlocks: list[str] | None = None
    remoteIpBlocks: list[str] | None = None
    notRemoteIpBlocks: list[str] | None = None


class Operation(Strict):
    hosts: list[str] | None = None
    notHosts: list[str] | None = None
    ports: list[str] | None = None
    notPorts: list[str] | None = None
    methods: list[str] | None = None
    notMethods: list[str] | None = None
    paths: list[str] | None = None
    notPaths: list[str] | None = None


class RuleFrom(Strict):
    source: Source


class RuleTo(Strict):
    operation: Operation


WHEN_KEYS = ("source.ip", "remote.ip", "source.namespace", "source.principal", "request.auth.principal",
             "request.auth.audiences", "request.auth.presenter", "destination.ip", "destination.port",
             "connection.sni")
WHEN_MAP_KEYS = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")


class Condition(Strict):
    key: Annotated[str, Field(min_length=1)]
    values: list[str] | None = None
    notValues: list[str] | None = None

    @model_validator(mode="after")
    def _attribute(self) -> "Condition":
        """Istio's ValidateAttribute: a known key, `[name]` where the key takes one, some value."""
        key = self.key
        if not (self.values or self.notValues):
            raise ValueError(f"at least one of values or notValues must be set for key {key}")
        prefix = next((k for k in WHEN_MAP_KEYS if key.startswith(k)), None)
        if prefix:
            if not (key.endswith("]") and "[" in key[len(prefix) - 1:] and not key.endswith("[]")):
                raise ValueError(f"invalid key {key}: expecting format {prefix.rstrip('.')}[<NAME>]")
        elif key not in WHEN_KEYS:
            raise ValueError(f"unknown attribute: {key}")
        if key == "destination.port":
            for v in (self.values or []) + (self.notValues or []):
                if not v.isdigit() or not 0 < int(v) < 65536:
                    raise ValueError(f"invalid port {v!r} for key {key}")
        return self


class Rule(Strict):
    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class AuthorizationPolicySpec(Strict):
    selector: WorkloadSelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: Annotated[list[PolicyTargetReference], Field(max_length=16)] | None = None
    rules: list[Rule] | None = None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: dict[str, str] | None = None

    @model_validator(mode="after")
    def _exclusive(self) -> "AuthorizationPolicySpec":
        if self.selector and (self.targetRef or self.targetRefs):
            raise ValueError("only one of targetRefs or workloadSelector can be set")
        if self.action == "CUSTOM" and not self.provider:
            raise ValueError("provider: Required value: a CUSTOM action needs a provider")
        return self


class AuthorizationPolicy(Resource):
    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)


# -- RequestAuthentication (security.istio.io/v1) ------------------------------------------------
HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")  # the CRD's pattern for outputClaimToHeaders[].header


def parse_jwks_uri(uri: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a `jwksUri`, as Istio's security.ParseJwksURI reads it (80/443 by default)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid jwksUri {uri!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f'URI scheme "{parts.scheme}" is not supported')
    if not parts.hostname:
        raise ValueError(f"invalid jwksUri {uri!r}: no host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_jwks(text: str) -> None:
    """A JSON Web Key Set, or one key (what istiod's jwk.Parse accepts)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"jwks parse error: {exc}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if isinstance(data, dict) and "kty" in data:
        keys = [data]
    if not isinstance(keys, list) or not all(isinstance(k, dict) and k.get("kty") for k in keys):
        raise ValueError("jwks parse error: expected a JSON Web Key Set ({\"keys\": [...]}) or a key with \"kty\"")


class JWTHeader(Strict):
    name: str
    prefix: str | None = None

    @model_validator(mode="after")
    def _name(self) -> "JWTHeader":
        if not self.name:
            raise ValueError("location header name must be non-empty string")
        return self


class ClaimToHeader(Strict):
    header: str
    claim: str

    @model_validator(mode="after")
    def _values(self) -> "ClaimToHeader":
        if not self.header or not self.claim:
            raise ValueError("outputClaimToHeaders header and claim value must be non-empty string")
        if not HEADER_NAME.match(self.header):
            raise ValueError(f"header: invalid header name {self.header!r}: expected letters, digits, '-' or '_'")
        return self


class JWTRule(Strict):
    issuer: str | None = None
    audiences: list[str] | None = None
    jwksUri: str | None = None
    jwks_uri: str | None = None  # the CRD's older spelling
    jwks: str | None = None
    fromHeaders: list[JWTHeader] | None = None
    fromParams: list[str] | None = None
    fromCookies: list[str] | None = None
    outputPayloadToHeader: str | None = None
    forwardOriginalToken: bool | None = None
    outputClaimToHeaders: list[ClaimToHeader] | None = None
    spaceDelimitedClaims: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=64)] | None = None
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _valid(self) -> "JWTRule":
        """istiod's validateJwtRule, and the CRD's rules, with their words."""
        if any(not a for a in self.audiences or []):
            raise ValueError("audiences: audience must be non-empty string")
        uri = self.jwksUri or self.jwks_uri
        if not self.issuer and not uri:
            raise ValueError("issuer or jwksUri must be non-empty string")
        if sum(x is not None for x in (self.jwksUri, self.jwks_uri, self.jwks)) > 1:
            raise ValueError("only one of jwks or jwksUri can be set")
        if uri is not None:
            try:
                parse_jwks_uri(uri)
            except ValueError as exc:
                raise ValueError(f"jwksUri: {exc}") from None
        if self.jwks is not None:
            try:
                check_jwks(self.jwks)
            except ValueError as exc:
                raise ValueError(f"jwks: {exc}") from None
        if any(not p for p in self.fromParams or []):
            raise ValueError("fromParams: location query must be non-empty string")
        if any(not c for c in self.fromCookies or []):
            raise ValueError("fromCookies: cookie name must be non-empty string")
        return self

    @property
    def uri(self) -> str | None:
        return self.jwksUri or self.jwks_uri


class RequestAuthenticationSpec(Strict):
    selector: WorkloadSelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: Annotated[list[PolicyTargetReference], Field(max_length=16)] | None = None
    jwtRules: Annotated[list[JWTRule], Field(max_length=4096)] | None = None

    @model_validator(mode="after")
    def _exclusive(self) -> "RequestAuthenticationSpec":
        if sum(x is not None for x in (self.selector, self.targetRef, self.targetRefs)) > 1:
            raise ValueError("only one of targetRefs or selector can be set")
        return self


class RequestAuthentication(Resource):
    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)


# -- PeerAuthentication (security.istio.io/v1) ---------------------------------------------------
MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(Strict):
    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(Strict):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    portLevelMtls: dict[int, MutualTLS] | None = None

    @field_validator("portLevelMtls", mode="before")
    @classmethod
    def _port_keys(cls, value: Any) -> Any:
        """Kubernetes JSON has string keys ("9090"), YAML has numbers; both name a port."""
        if not isinstance(value, dict):
            return value
        out = {}
        for key, mtls in value.items():
            if isinstance(key, str) and key.strip().isdigit():
                key = int(key)
            if not isinstance(key, int) or isinstance(key, bool):
                raise ValueError(f"port {key!r}: expected a port number")
            out[key] = mtls
        return out

    @model_validator(mode="after")
    def _valid(self) -> "PeerAuthenticationSpec":
        """The CRD's rules and istiod's ValidatePeerAuthentication, with their words."""
        if self.portLevelMtls is not None:
            if not self.portLevelMtls:
                raise ValueError("portLevelMtls: port level mTLS, if defined, must have at least one element")
            if not all(0 < port <= 65535 for port in self.portLevelMtls):
                raise ValueError("portLevelMtls: port must be between 1-65535")
            if not (self.selector and self.selector.matchLabels):
                raise ValueError("portLevelMtls requires selector")
        for key, value in (self.selector.matchLabels if self.selector else {}).items():
            if not key:
                raise ValueError("selector.matchLabels: key must not be empty")
            if "*" in key or "*" in value:
                raise ValueError("selector.matchLabels: wildcard not allowed in label key or value match")
        return self

    @property
    def mode(self) -> str:
        return self.mtls.mode if self.mtls else "UNSET"


class PeerAuthentication(Resource):
    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)


class TelemetryProvider(Strict):
    name: Annotated[str, Field(min_length=1)]


class AccessLogFilter(Strict):
    expression: Annotated[str, Field(min_length=1)]


class AccessLogging(Strict):
    providers: list[TelemetryProvider] | None = None
    disabled: bool | None = None
    filter: AccessLogFilter | None = None
    match: dict[str, Any] | None = None


class TracingSelector(Strict):
    mode: Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"] = "CLIENT_AND_SERVER"


class CustomTagLiteral(Strict):
    value: str


class CustomTagFromName(Strict):
    """An environment variable or request header, with a value for when it is missing."""

    name: Annotated[str, Field(min_length=1)]
    defaultValue: str | None = None


class CustomTag(Strict):
    literal: CustomTagLiteral | None = None
    environment: CustomTagFromName | None = None
    header: CustomTagFromName | None = None
    formatter: CustomTagLiteral | None = None  # {value: "%REQ(...)%"}

    @model_validator(mode="after")
    def _one_kind(self) -> "CustomTag":
        if sum(x is not None for x in (self.literal, self.environment, self.header, self.formatter)) != 1:
            raise ValueError("exactly one of literal, environment, header or formatter must be set")
        return self


class Tracing(Strict):
    """One `spec.tracing` entry: later entries (and more specific Telemetry) override earlier ones."""

    match: TracingSelector | None = None
    providers: list[TelemetryProvider] | None = None
    randomSamplingPercentage: Annotated[float, Field(ge=0, le=100)] | None = None
    disableSpanReporting: bool | None = None
    customTags: dict[str, CustomTag] | None = None
    useRequestIdForTraceSampling: bool | None = None
    enableIstioTags: bool | None = None
    disableContextPropagation: bool | None = None


class TelemetrySpec(Strict):
    selector: WorkloadSelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: list[PolicyTargetReference] | None = None
    accessLogging: list[AccessLogging] | None = None
    tracing: list[Tracing] | None = None
    metrics: list[dict[str, Any]] | None = None


class Telemetry(Resource):
    kind: Literal["Telemetry"]
    spec: TelemetrySpec = Field(default_factory=TelemetrySpec)


# -- EnvoyFilter (networking.istio.io/v1alpha3) --------------------------------------------------
ApplyTo = Literal["LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION", "VIRTUAL_HOST",
                  "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"]
LISTENER_OBJECTS = ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "LISTENER_FILTER")
ROUTE_OBJECTS = ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE")


class EnvoyFilterSubFilterMatch(Strict):
    name: str | None = None


class EnvoyFilterFilterMatch(Strict):
    name: str | None = None
    subFilter: EnvoyFilterSubFilterMatch | None = None


class EnvoyFilterChainMatch(Strict):
    name: str | None = None
    sni: str | None = None
    transportProtocol: str | None = None
    applicationProtocols: str | None = None
    filter: EnvoyFilterFilterMatch | None = None
    destinationPort: Annotated[int, Field(ge=0)] | None = None


class EnvoyFilterListenerMatch(Strict):
    portNumber: Annotated[int, Field(ge=0)] | None = None
    portName: str | None = None
    filterChain: EnvoyFilterChainMatch | None = None
    listenerFilter: str | None = None
    name: str | None = None


class EnvoyFilterRouteMatch(Strict):
    name: str | None = None
    action: Literal["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"] = "ANY"


class EnvoyFilterVirtualHostMatch(Strict):
    name: str | None = None
    route: EnvoyFilterRouteMatch | None = None


class EnvoyFilterRouteConfigurationMatch(Strict):
    portNumber: Annotated[int, Field(ge=0)] | None = None
    portName: str | None = None
    gateway: str | None = None
    vhost: EnvoyFilterVirtualHostMatch | None = None
    name: str | None = None


class EnvoyFilterClusterMatch(Strict):
    portNumber: Annotated[int, Field(ge=0)] | None = None
    service: str | None = None
    subset: str | None = None
    name: str | None = None


class EnvoyFilterProxyMatch(Strict):
    proxyVersion: str | None = None
    metadata: dict[str, str] | None = None


class EnvoyConfigObjectMatch(Strict):
    context: Literal["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"] = "ANY"
    proxy: EnvoyFilterProxyMatch | None = None
    listener: EnvoyFilterListenerMatch | None = None
    routeConfiguration: EnvoyFilterRouteConfigurationMatch | None = None
    cluster: EnvoyFilterClusterMatch | None = None

    @model_validator(mode="after")
    def _one_object(self) -> "EnvoyConfigObjectMatch":
        if sum(m is not None for m in (self.listener, self.routeConfiguration, self.cluster)) > 1:
            raise ValueError("only one of listener, routeConfiguration or cluster may be set")
        return self


class EnvoyFilterPatch(Strict):
    operation: Literal["MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE",
                       "MERGE_AND_REPLACE_LIST"]
    value: dict[str, Any] | None = None
    filterClass: Literal["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"] | None = None


class EnvoyConfigObjectPatch(Strict):
    applyTo: ApplyTo
    match: EnvoyConfigObjectMatch = Field(default_factory=EnvoyConfigObjectMatch)
    patch: EnvoyFilterPatch

    @model_validator(mode="after")
    def _consistent(self) -> "EnvoyConfigObjectPatch":
        """Istio's admission checks: the match selects the kind of object applyTo names."""
        m = self.match
        if self.applyTo in LISTENER_OBJECTS and (m.routeConfiguration or m.cluster):
            raise ValueError(f"applyTo {self.applyTo} needs a listener match, not routeConfiguration or cluster")
        if self.applyTo in ROUTE_OBJECTS and (m.listener or m.cluster):
            raise ValueError(f"applyTo {self.applyTo} needs a routeConfiguration match, not listener or cluster")
        if self.applyTo == "CLUSTER" and (m.listener or m.routeConfiguration):
            raise ValueError("applyTo CLUSTER needs a cluster match, not listener or routeConfiguration")
        if self.patch.operation != "REMOVE" and not self.patch.value:
            raise ValueError(f"patch.value: Required value: a {self.patch.operation} patch needs a value")
        return self


class SidecarWorkloadSelector(Strict):
    """networking.istio.io's WorkloadSelector (`labels`, unlike security's `matchLabels`)."""

    labels: dict[str, str] = Field(default_factory=dict)


class EnvoyFilterSpec(Strict):
    workloadSelector: SidecarWorkloadSelector | None = None
    targetRefs: Annotated[list[PolicyTargetReference], Field(max_length=16)] | None = None
    configPatches: list[EnvoyConfigObjectPatch] = Field(default_factory=list)
    priority: Annotated[int, Field(ge=-2**31, le=2**31 - 1)] = 0

    @model_validator(mode="after")
    def _exclusive(self) -> "EnvoyFilterSpec":
        if self.workloadSelector and self.targetRefs:
            raise ValueError("only one of targetRefs or workloadSelector can be set")
        return self


class EnvoyFilter(Resource):
    kind: Literal["EnvoyFilter"]
    spec: EnvoyFilterSpec
