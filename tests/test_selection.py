"""Waypoint selection (istio-facts §3) through the real store: apply YAML, label, mark waypoints
ready, then check the selection Decision and the WaypointBound condition istiod would write."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from conftest import (
    apply,
    bound_condition,
    condition,
    conditions,
    decide,
    make_waypoint_ready,
    make_waypoint_unready,
    set_labels,
    waypoint_pods,
)
from meshway.mesh.selection import (
    ACCEPTED,
    CROSS_NS,
    DENIED,
    NO_WAYPOINT,
    NOT_FOUND,
    NOT_READY,
    OPTED_OUT,
    UNSUPPORTED,
)
from meshway.mesh.status import WAYPOINT_BOUND
from meshway.model import find_kind

USE = "istio.io/use-waypoint"
USE_NS = "istio.io/use-waypoint-namespace"
FOR = "istio.io/waypoint-for"
INGRESS = "istio.io/ingress-use-waypoint"

SVC = ("Service", "default", "reviews")
POD = ("Pod", "default", "app")
CONSUMER_SVC = ("Service", "consumer", "api")
CONSUMER_SE = ("ServiceEntry", "consumer", "httpbin")
DEFAULT_SE = ("ServiceEntry", "default", "httpbin")

NOT_USING = (". Ingress traffic is not using the waypoint, set the istio.io/ingress-use-waypoint label to true "
             "if desired.")
TRAVERSE = ". Ingress traffic will traverse the waypoint"


def accepted(wp: str, tail: str = NOT_USING) -> tuple[str, str, str]:
    return ("True", ACCEPTED, f"Successfully attached to waypoint {wp}{tail}")


def not_ready(wp: str) -> tuple[str, str, str]:
    return ("False", NOT_READY, f'waypoint "{wp}" is not ready')


def unsupported(wp: str) -> tuple[str, str, str]:
    return ("False", UNSUPPORTED, f'attempting to bind to traffic type "service" which the waypoint "{wp}" '
                                  "does not support")


def denied(wp: str) -> tuple[str, str, str]:
    return ("False", DENIED, f'we are not permitted to attach to waypoint "{wp}" (missing allowedRoutes?)')


def cross_ns(wp: str) -> tuple[str, str, str]:
    return ("False", CROSS_NS, f'cannot bind to waypoint "{wp}" in another namespace: cross-namespace waypoint '
                               "binding is not permitted for a ServiceEntry with NAMESPACE visibility")


def gateway(name: str, namespace: str = "default", waypoint_for: str | None = None, allowed: str = "",
            class_name: str = "istio-waypoint", listener: str = "{name: mesh, port: 15008, protocol: HBONE}") -> str:
    labels = f"\n  labels: {{{FOR}: {waypoint_for}}}" if waypoint_for else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {namespace}{labels}
spec:
  gatewayClassName: {class_name}
  listeners:
  - {listener[:-1]}{allowed}}}
---"""


# Everything every case starts from: a service-only waypoint `default/waypoint`, a Service and a Pod
# in `default`, and namespaces `infra` (for cross-namespace waypoints) and `consumer` (with a Service).
WORLD = gateway("waypoint") + """
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: v1
kind: Namespace
metadata: {name: consumer}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: default, labels: {app: reviews}}
spec:
  containers: [{name: app, image: reviews}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: consumer}
spec:
  selector: {app: api}
  ports: [{name: http, port: 8080}]
---
"""


def service_entry(namespace: str, export_to: str | None) -> str:
    export = f"\n  exportTo: {export_to}" if export_to else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: {namespace}}}
spec:
  hosts: [httpbin.org]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS{export}
---"""


EXTRA = {
    "wl": gateway("wl", waypoint_for="workload"),
    "all": gateway("wpall", waypoint_for="all"),
    "none": gateway("wpnone", waypoint_for="none"),
    "svcwp": gateway("svcwp", waypoint_for="service"),
    "other-class": gateway("other", class_name="istio", listener="{name: http, port: 80, protocol: HTTP}"),
    "egress-same": gateway("egress", "infra"),
    "egress-all": gateway("egress", "infra", allowed=", allowedRoutes: {namespaces: {from: All}}"),
    "egress-same-all": gateway("egress", "infra", waypoint_for="all"),
    "egress-all-all": gateway("egress", "infra", waypoint_for="all",
                              allowed=", allowedRoutes: {namespaces: {from: All}}"),
    "egress-selector-match": gateway("egress", "infra", allowed=(
        ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: "
        "{kubernetes.io/metadata.name: consumer}}}}")),
    "egress-selector-nomatch": gateway("egress", "infra", allowed=(
        ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: "
        "{kubernetes.io/metadata.name: somewhere-else}}}}")),
    "egress-selector-expr": gateway("egress", "infra", allowed=(
        ", allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: "
        "[{key: kubernetes.io/metadata.name, operator: In, values: [consumer, other]}]}}}")),
    "mesh-class": """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: my-waypoints, labels: {istio.io/waypoint-for: all}}
spec: {controllerName: istio.io/mesh-controller}
---""" + gateway("custom", class_name="my-waypoints"),
    "foreign-class": """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: my-ingress}
spec: {controllerName: example.com/gateway-controller}
---""" + gateway("foreign", class_name="my-ingress"),
    "se-consumer-private": service_entry("consumer", '["."]'),
    "se-consumer-own-ns": service_entry("consumer", '["consumer"]'),
    "se-consumer-public": service_entry("consumer", '["*"]'),
    "se-default-private": service_entry("default", '["."]'),
}

NS = ("Namespace", None, "default")
CONSUMER_NS = ("Namespace", None, "consumer")
GATEWAY_CLASS = ("GatewayClass", None, "istio-waypoint")


@dataclass(frozen=True)
class Case:
    id: str
    target: tuple[str, str, str]
    reason: str
    waypoint: str | None = None
    ready: bool = False
    # The WaypointBound condition on the target (Service/ServiceEntry only): (status, reason, message) or None.
    cond: tuple[str, str, str] | None = None
    extra: tuple[str, ...] = ()
    labels: tuple[tuple[tuple[str, str | None, str], dict[str, str]], ...] = ()
    ready_waypoints: tuple[tuple[str, str], ...] = ()
    rules: tuple[str, ...] = ()  # substrings that must appear in the decision's rules


def on(obj: tuple[str, str | None, str], pairs: dict[str, str]):
    """Table shorthand: label `obj` (kind, namespace, name) with `pairs`."""
    return (obj, pairs)


WP_READY = (("default", "waypoint"),)

CASES = [
    # -- no label, namespace label, readiness ---------------------------------------------------
    Case("no-labels", SVC, NO_WAYPOINT, None, False, None),
    Case("no-labels-pod", POD, NO_WAYPOINT, None, False, None),
    Case("ns-label-not-ready", SVC, NOT_READY, "default/waypoint", False, not_ready("default/waypoint"),
         labels=(on(NS, {USE: "waypoint"}),)),
    Case("ns-label-ready", SVC, ACCEPTED, "default/waypoint", True, accepted("default/waypoint"),
         labels=(on(NS, {USE: "waypoint"}),), ready_waypoints=WP_READY),
    Case("ns-label-ready-ingress-on-ns", SVC, ACCEPTED, "default/waypoint", True,
         accepted("default/waypoint", TRAVERSE),
         labels=(on(NS, {USE: "waypoint", INGRESS: "true"}),), ready_waypoints=WP_READY),
    Case("ns-label-ready-ingress-on-service", SVC, ACCEPTED, "default/waypoint", True,
         accepted("default/waypoint", TRAVERSE),
         labels=(on(NS, {USE: "waypoint"}), on(SVC, {INGRESS: "true"})), ready_waypoints=WP_READY),
    Case("ingress-service-false-beats-ns-true", SVC, ACCEPTED, "default/waypoint", True,
         accepted("default/waypoint"),
         labels=(on(NS, {USE: "waypoint", INGRESS: "true"}), on(SVC, {INGRESS: "false"})),
         ready_waypoints=WP_READY),
    # -- precedence: the object's own label over the namespace's; `none` ---------------------------
    Case("service-label-overrides-ns", SVC, ACCEPTED, "default/wpall", True, accepted("default/wpall"),
         extra=("all",), labels=(on(NS, {USE: "waypoint"}), on(SVC, {USE: "wpall"})),
         ready_waypoints=(("default", "wpall"),), rules=("takes precedence",)),
    Case("service-label-not-ready-no-fallback-to-ready-ns-waypoint", SVC, NOT_READY, "default/wpall", False,
         not_ready("default/wpall"), extra=("all",),
         labels=(on(NS, {USE: "waypoint"}), on(SVC, {USE: "wpall"})), ready_waypoints=WP_READY),
    Case("service-label-without-ns-label", SVC, NOT_READY, "default/waypoint", False,
         not_ready("default/waypoint"), labels=(on(SVC, {USE: "waypoint"}),)),
    Case("service-none-opts-out-despite-ns", SVC, OPTED_OUT, None, False, None,
         labels=(on(NS, {USE: "waypoint"}), on(SVC, {USE: "none"})), ready_waypoints=WP_READY),
    Case("ns-none-opts-out", SVC, OPTED_OUT, None, False, None, labels=(on(NS, {USE: "none"}),)),
    Case("ns-none-opts-out-pod", POD, OPTED_OUT, None, False, None, labels=(on(NS, {USE: "none"}),)),
    Case("service-label-overrides-ns-none", SVC, NOT_READY, "default/waypoint", False,
         not_ready("default/waypoint"), labels=(on(NS, {USE: "none"}), on(SVC, {USE: "waypoint"}))),
    # -- missing waypoint: no fallback ---------------------------------------------------------
    Case("service-label-missing-waypoint-no-fallback", SVC, NOT_FOUND, None, False, not_ready("default/missing"),
         labels=(on(NS, {USE: "waypoint"}), on(SVC, {USE: "missing"})), ready_waypoints=WP_READY,
         rules=("no fallback",)),
    Case("ns-label-missing-waypoint", SVC, NOT_FOUND, None, False, not_ready("default/missing"),
         labels=(on(NS, {USE: "missing"}),)),
    Case("pod-label-missing-waypoint", POD, NOT_FOUND, None, False, None,
         extra=("wl",), labels=(on(NS, {USE: "wl"}), on(POD, {USE: "missing"})),
         ready_waypoints=(("default", "wl"),)),
    Case("other-gateway-class-is-not-a-waypoint", SVC, NOT_FOUND, None, False, not_ready("default/other"),
         extra=("other-class",), labels=(on(SVC, {USE: "other"}),), rules=("gatewayClassName is 'istio'",)),
    Case("class-with-another-controller-is-not-a-waypoint", SVC, NOT_FOUND, None, False,
         not_ready("default/foreign"), extra=("foreign-class",), labels=(on(SVC, {USE: "foreign"}),)),
    Case("class-with-mesh-controller-is-a-waypoint-service", SVC, ACCEPTED, "default/custom", True,
         accepted("default/custom"), extra=("mesh-class",), labels=(on(SVC, {USE: "custom"}),),
         ready_waypoints=(("default", "custom"),)),
    Case("class-with-mesh-controller-label-all-admits-pod", POD, NOT_READY, "default/custom", False, None,
         extra=("mesh-class",), labels=(on(POD, {USE: "custom"}),),
         rules=("GatewayClass my-waypoints label istio.io/waypoint-for=all",)),
    # -- traffic type --------------------------------------------------------------------------
    Case("service-to-workload-waypoint", SVC, UNSUPPORTED, None, False, unsupported("default/wl"),
         extra=("wl",), labels=(on(SVC, {USE: "wl"}),), ready_waypoints=(("default", "wl"),)),
    Case("service-via-ns-to-workload-waypoint", SVC, UNSUPPORTED, None, False, unsupported("default/wl"),
         extra=("wl",), labels=(on(NS, {USE: "wl"}),)),
    Case("service-to-all-waypoint", SVC, ACCEPTED, "default/wpall", True, accepted("default/wpall"),
         extra=("all",), labels=(on(SVC, {USE: "wpall"}),), ready_waypoints=(("default", "wpall"),)),
    Case("pod-to-all-waypoint", POD, ACCEPTED, "default/wpall", True, None,
         extra=("all",), labels=(on(POD, {USE: "wpall"}),), ready_waypoints=(("default", "wpall"),)),
    Case("pod-via-ns-to-all-waypoint", POD, NOT_READY, "default/wpall", False, None,
         extra=("all",), labels=(on(NS, {USE: "wpall"}),)),
    Case("service-to-none-waypoint", SVC, UNSUPPORTED, None, False, unsupported("default/wpnone"),
         extra=("none",), labels=(on(SVC, {USE: "wpnone"}),)),
    Case("pod-to-none-waypoint", POD, UNSUPPORTED, None, False, None,
         extra=("none",), labels=(on(POD, {USE: "wpnone"}),)),
    Case("gatewayclass-label-workload-refuses-service", SVC, UNSUPPORTED, None, False,
         unsupported("default/waypoint"),
         labels=(on(GATEWAY_CLASS, {FOR: "workload"}), on(SVC, {USE: "waypoint"})), ready_waypoints=WP_READY,
         rules=("GatewayClass istio-waypoint label istio.io/waypoint-for=workload",)),
    Case("gatewayclass-label-workload-admits-pod", POD, ACCEPTED, "default/waypoint", True, None,
         labels=(on(GATEWAY_CLASS, {FOR: "workload"}), on(POD, {USE: "waypoint"})), ready_waypoints=WP_READY),
    Case("gateway-label-beats-gatewayclass-label", SVC, NOT_READY, "default/svcwp", False,
         not_ready("default/svcwp"), extra=("svcwp",),
         labels=(on(GATEWAY_CLASS, {FOR: "workload"}), on(SVC, {USE: "svcwp"}))),
    # -- pods ------------------------------------------------------------------------------------
    Case("pod-label-workload-waypoint-not-ready", POD, NOT_READY, "default/wl", False, None,
         extra=("wl",), labels=(on(POD, {USE: "wl"}),)),
    Case("pod-label-workload-waypoint-ready", POD, ACCEPTED, "default/wl", True, None,
         extra=("wl",), labels=(on(POD, {USE: "wl"}),), ready_waypoints=(("default", "wl"),)),
    Case("pod-own-label-to-service-waypoint", POD, UNSUPPORTED, None, False, None,
         labels=(on(POD, {USE: "waypoint"}),), ready_waypoints=WP_READY),
    Case("pod-via-ns-to-service-waypoint-silently-ignored", POD, NO_WAYPOINT, None, False, None,
         labels=(on(NS, {USE: "waypoint"}),), ready_waypoints=WP_READY),
    Case("service-still-bound-when-ns-waypoint-is-service-only", SVC, ACCEPTED, "default/waypoint", True,
         accepted("default/waypoint"), labels=(on(NS, {USE: "waypoint"}),), ready_waypoints=WP_READY),
    Case("pod-via-ns-to-workload-waypoint", POD, ACCEPTED, "default/wl", True, None,
         extra=("wl",), labels=(on(NS, {USE: "wl"}),), ready_waypoints=(("default", "wl"),)),
    Case("pod-label-overrides-ns", POD, NOT_READY, "default/wl", False, None,
         extra=("wl",), labels=(on(NS, {USE: "waypoint"}), on(POD, {USE: "wl"}))),
    Case("pod-label-none", POD, OPTED_OUT, None, False, None,
         extra=("wl",), labels=(on(NS, {USE: "wl"}), on(POD, {USE: "none"})), ready_waypoints=(("default", "wl"),)),
    # -- cross-namespace: allowedRoutes ------------------------------------------------------------
    Case("cross-ns-default-same-denied", CONSUMER_SVC, DENIED, None, False, denied("infra/egress"),
         extra=("egress-same",), labels=(on(CONSUMER_SVC, {USE: "egress", USE_NS: "infra"}),),
         ready_waypoints=(("infra", "egress"),)),
    Case("cross-ns-from-all-not-ready", CONSUMER_SVC, NOT_READY, "infra/egress", False, not_ready("infra/egress"),
         extra=("egress-all",), labels=(on(CONSUMER_SVC, {USE: "egress", USE_NS: "infra"}),)),
    Case("cross-ns-from-all-ready", CONSUMER_SVC, ACCEPTED, "infra/egress", True, accepted("infra/egress"),
         extra=("egress-all",), labels=(on(CONSUMER_SVC, {USE: "egress", USE_NS: "infra"}),),
         ready_waypoints=(("infra", "egress"),)),
    Case("cross-ns-via-namespace-labels", CONSUMER_SVC, ACCEPTED, "infra/egress", True, accepted("infra/egress"),
         extra=("egress-all",), labels=(on(CONSUMER_NS, {USE: "egress", USE_NS: "infra"}),),
         ready_waypoints=(("infra", "egress"),)),
    Case("use-waypoint-namespace-read-from-same-object-only", CONSUMER_SVC, NOT_FOUND, None, False,
         not_ready("consumer/egress"), extra=("egress-all",),
         labels=(on(CONSUMER_NS, {USE: "egress", USE_NS: "infra"}), on(CONSUMER_SVC, {USE: "egress"})),
         ready_waypoints=(("infra", "egress"),)),
    Case("cross-ns-selector-match", CONSUMER_SVC, ACCEPTED, "infra/egress", True, accepted("infra/egress"),
         extra=("egress-selector-match",), labels=(on(CONSUMER_SVC, {USE: "egress", USE_NS: "infra"}),),
         ready_waypoints=(("infra", "egress"),)),
    Case("cross-ns-selector-match-expression", CONSUMER_SVC, NOT_READY, "infra/egress", False,
         not_ready("infra/egress"), extra=("egress-selector-expr",),
         labels=(on(CONSUMER_SVC, {USE: "egress", USE_NS: "infra"}),)),
    Case("cross-ns-selector-no-match-denied", CONSUMER_SVC, DENIED, None, False, denied("infra/egress"),
         extra=("egress-selector-nomatch",), labels=(on(CONSUMER_SVC, {USE: "egress", USE_NS: "infra"}),),
         ready_waypoints=(("infra", "egress"),)),
    Case("cross-ns-pod-default-same-denied", POD, DENIED, None, False, None,
         extra=("egress-same-all",), labels=(on(POD, {USE: "egress", USE_NS: "infra"}),),
         ready_waypoints=(("infra", "egress"),)),
    Case("cross-ns-pod-from-all", POD, ACCEPTED, "infra/egress", True, None,
         extra=("egress-all-all",), labels=(on(POD, {USE: "egress", USE_NS: "infra"}),),
         ready_waypoints=(("infra", "egress"),)),
    # -- ServiceEntry visibility ---------------------------------------------------------------
    Case("se-namespace-visibility-cross-ns-forbidden", CONSUMER_SE, CROSS_NS, None, False, cross_ns("infra/egress"),
         extra=("egress-all", "se-consumer-private"),
         labels=(on(CONSUMER_SE, {USE: "egress", USE_NS: "infra"}),), ready_waypoints=(("infra", "egress"),)),
    Case("se-exported-to-own-namespace-by-name-cross-ns-forbidden", CONSUMER_SE, CROSS_NS, None, False,
         cross_ns("infra/egress"), extra=("egress-all", "se-consumer-own-ns"),
         labels=(on(CONSUMER_SE, {USE: "egress", USE_NS: "infra"}),), ready_waypoints=(("infra", "egress"),)),
    Case("se-public-cross-ns-allowed", CONSUMER_SE, ACCEPTED, "infra/egress", True, accepted("infra/egress"),
         extra=("egress-all", "se-consumer-public"),
         labels=(on(CONSUMER_SE, {USE: "egress", USE_NS: "infra"}),), ready_waypoints=(("infra", "egress"),)),
    Case("se-namespace-visibility-same-ns-ok", DEFAULT_SE, ACCEPTED, "default/waypoint", True,
         accepted("default/waypoint"), extra=("se-default-private",),
         labels=(on(NS, {USE: "waypoint"}),), ready_waypoints=WP_READY),
    Case("se-namespace-visibility-same-ns-not-ready", DEFAULT_SE, NOT_READY, "default/waypoint", False,
         not_ready("default/waypoint"), extra=("se-default-private",), labels=(on(DEFAULT_SE, {USE: "waypoint"}),)),
    Case("se-no-label-no-condition", DEFAULT_SE, NO_WAYPOINT, None, False, None, extra=("se-default-private",)),
    # -- a waypoint's own Service never uses a waypoint ------------------------------------------
    Case("waypoint-own-service-ns-labelled", ("Service", "default", "waypoint"), NO_WAYPOINT, None, False, None,
         labels=(on(NS, {USE: "waypoint"}),), ready_waypoints=WP_READY),
    Case("waypoint-own-service-ns-labelled-not-ready", ("Service", "default", "waypoint"), NO_WAYPOINT, None, False,
         None, labels=(on(NS, {USE: "waypoint"}),)),
    Case("other-waypoint-service-ns-labelled", ("Service", "default", "wpall"), NO_WAYPOINT, None, False, None,
         extra=("all",), labels=(on(NS, {USE: "waypoint"}),), ready_waypoints=WP_READY),
]


def build_world(store, case: Case) -> None:
    apply(store, WORLD + "".join(EXTRA[name] for name in case.extra))
    for (kind, ns, name), pairs in case.labels:
        set_labels(store, kind, ns, name, pairs)
    for ns, gw in case.ready_waypoints:
        make_waypoint_ready(store, ns, gw)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_selection_table(store, case: Case):
    build_world(store, case)
    kind, ns, name = case.target

    decision = decide(store, kind, ns, name)
    assert (decision.reason, decision.waypoint, decision.ready) == (case.reason, case.waypoint, case.ready), \
        decision.rules
    assert decision.destination.kind == kind
    assert decision.addressed_as == ("workload" if kind == "Pod" else "service")
    for fragment in case.rules:
        assert any(fragment in rule for rule in decision.rules), (fragment, decision.rules)

    body = store.get(find_kind(kind), ns, name)
    cond = condition(body, WAYPOINT_BOUND)
    if kind == "Pod":
        assert cond is None, "istiod writes WaypointBound on Services and ServiceEntries, never on Pods"
        return
    if case.cond is None:
        assert cond is None, cond
    else:
        assert cond is not None, f"no {WAYPOINT_BOUND} condition on {kind} {ns}/{name}: {conditions(body)}"
        assert (cond["status"], cond["reason"], cond["message"]) == case.cond
        assert cond["lastTransitionTime"]


# -- transitions -------------------------------------------------------------------------------------
def test_namespace_label_then_ready_then_unlabel(store):
    apply(store, WORLD)
    assert bound_condition(store, *SVC) is None

    set_labels(store, "namespace", None, "default", {USE: "waypoint"})
    cond = bound_condition(store, *SVC)
    assert (cond["status"], cond["reason"], cond["message"]) == not_ready("default/waypoint")
    assert decide(store, *SVC).reason == NOT_READY

    make_waypoint_ready(store, "default", "waypoint")
    cond = bound_condition(store, *SVC)
    assert (cond["status"], cond["reason"], cond["message"]) == accepted("default/waypoint")
    d = decide(store, *SVC)
    assert (d.reason, d.waypoint, d.ready) == (ACCEPTED, "default/waypoint", True)

    set_labels(store, "namespace", None, "default", {INGRESS: "true"})
    cond = bound_condition(store, *SVC)
    assert cond["message"] == "Successfully attached to waypoint default/waypoint" + TRAVERSE

    set_labels(store, "namespace", None, "default", {}, remove=[USE])
    assert bound_condition(store, *SVC) is None
    assert decide(store, *SVC).reason == NO_WAYPOINT
    # Nothing else is left behind in status.conditions either.
    assert "conditions" not in (store.get(find_kind("svc"), "default", "reviews").get("status") or {})


def test_waypoint_losing_its_replicas_keeps_the_binding(store):
    """Only the first readiness gates binding: a waypoint that was ready keeps its services when its
    replicas go away (the Gateway's addresses stay), so traffic fails at it rather than bypassing it."""
    apply(store, WORLD)
    set_labels(store, "namespace", None, "default", {USE: "waypoint"})
    make_waypoint_ready(store, "default", "waypoint")
    assert bound_condition(store, *SVC)["reason"] == ACCEPTED
    make_waypoint_unready(store, "default", "waypoint")
    d = decide(store, *SVC)
    assert (d.reason, d.waypoint, d.ready) == (ACCEPTED, "default/waypoint", False)
    assert "never bypass" in d.rules[-1]
    cond = bound_condition(store, *SVC)
    assert (cond["status"], cond["reason"]) == ("True", ACCEPTED)
    gateway = store.get(find_kind("gateway"), "default", "waypoint")
    programmed = next(c for c in gateway["status"]["conditions"] if c["type"] == "Programmed")
    assert (programmed["status"], programmed["reason"]) == ("False", "AddressNotAssigned")
    assert gateway["status"]["addresses"]  # never removed once reported


def test_waypoint_never_ready_does_not_bind(store):
    apply(store, WORLD)
    set_labels(store, "namespace", None, "default", {USE: "waypoint"})
    d = decide(store, *SVC)
    assert (d.reason, d.waypoint, d.ready) == (NOT_READY, "default/waypoint", False)
    cond = bound_condition(store, *SVC)
    assert (cond["status"], cond["reason"], cond["message"]) == not_ready("default/waypoint")


def test_removing_service_label_removes_condition(store):
    apply(store, WORLD)
    set_labels(store, "svc", "default", "reviews", {USE: "waypoint"})
    assert bound_condition(store, *SVC)["reason"] == NOT_READY
    set_labels(store, "svc", "default", "reviews", {}, remove=[USE])
    assert bound_condition(store, *SVC) is None
    assert decide(store, *SVC).reason == NO_WAYPOINT


def test_removing_service_label_falls_back_to_namespace_label(store):
    apply(store, WORLD + EXTRA["all"])
    set_labels(store, "ns", None, "default", {USE: "waypoint"})
    set_labels(store, "svc", "default", "reviews", {USE: "wpall"})
    assert bound_condition(store, *SVC)["message"] == 'waypoint "default/wpall" is not ready'
    set_labels(store, "svc", "default", "reviews", {}, remove=[USE])
    assert bound_condition(store, *SVC)["message"] == 'waypoint "default/waypoint" is not ready'


def test_condition_transition_time_kept_while_status_unchanged(store):
    apply(store, WORLD + EXTRA["all"])
    set_labels(store, "ns", None, "default", {USE: "waypoint"})
    first = bound_condition(store, *SVC)
    set_labels(store, "svc", "default", "reviews", {USE: "wpall"})
    second = bound_condition(store, *SVC)
    assert second["status"] == first["status"] == "False"
    assert second["lastTransitionTime"] == first["lastTransitionTime"]


def test_deleting_the_waypoint_keeps_the_binding_error(store):
    """The label stays; with the waypoint gone the decision is WaypointNotFound, the status still says
    the waypoint is not ready (Istio cannot tell the two apart)."""
    apply(store, WORLD)
    set_labels(store, "ns", None, "default", {USE: "waypoint"})
    make_waypoint_ready(store, "default", "waypoint")
    assert bound_condition(store, *SVC)["reason"] == ACCEPTED
    store.delete([(find_kind("gateway"), "default", "waypoint")])
    assert decide(store, *SVC).reason == NOT_FOUND
    cond = bound_condition(store, *SVC)
    assert (cond["status"], cond["reason"], cond["message"]) == not_ready("default/waypoint")


def test_waypoint_own_pods_never_use_a_waypoint(store):
    apply(store, WORLD + EXTRA["wl"])
    set_labels(store, "ns", None, "default", {USE: "wl"})
    make_waypoint_ready(store, "default", "wl")
    assert decide(store, *POD).reason == ACCEPTED
    for gw in ("waypoint", "wl"):
        for pod in waypoint_pods(store, "default", gw):
            d = decide(store, "Pod", "default", pod["metadata"]["name"])
            assert (d.reason, d.waypoint) == (NO_WAYPOINT, None)


# -- Gateway status ------------------------------------------------------------------------------------
def gateway_conditions(store, ns: str, name: str) -> dict[str, dict]:
    body = store.get(find_kind("gateway"), ns, name)
    return {c["type"]: c for c in conditions(body)}


def test_gateway_status_not_ready(store):
    apply(store, WORLD)
    gw = store.get(find_kind("gateway"), "default", "waypoint")
    conds = gateway_conditions(store, "default", "waypoint")
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"], conds["Accepted"]["message"]) == \
        ("True", "Accepted", "Resource accepted")
    assert (conds["Programmed"]["status"], conds["Programmed"]["reason"], conds["Programmed"]["message"]) == \
        ("False", "AddressNotAssigned",
         'Failed to assign to any requested addresses: no instances found for hostname '
         '"waypoint.default.svc.cluster.local"')
    assert conds["ResolvedRefs"]["status"] == "True"
    assert not gw["status"].get("addresses")
    for cond in conds.values():
        assert cond["observedGeneration"] == gw["metadata"]["generation"]


def test_gateway_status_ready(store):
    apply(store, WORLD)
    make_waypoint_ready(store, "default", "waypoint")
    gw = store.get(find_kind("gateway"), "default", "waypoint")
    conds = gateway_conditions(store, "default", "waypoint")
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == ("True", "Accepted")
    assert (conds["Programmed"]["status"], conds["Programmed"]["reason"], conds["Programmed"]["message"]) == \
        ("True", "Programmed",
         "Resource programmed, assigned to service(s) waypoint.default.svc.cluster.local:15008")
    svc = store.get(find_kind("svc"), "default", "waypoint")
    cluster_ip = svc["spec"]["clusterIP"]
    assert cluster_ip.startswith("10.96.")
    addresses = gw["status"]["addresses"]
    assert {"type": "IPAddress", "value": cluster_ip} in addresses
    assert {"type": "Hostname", "value": "waypoint.default.svc.cluster.local"} in addresses
    assert len(addresses) == 2


def test_gateway_addresses_kept_when_waypoint_becomes_unready(store):
    apply(store, WORLD)
    make_waypoint_ready(store, "default", "waypoint")
    before = store.get(find_kind("gateway"), "default", "waypoint")["status"]["addresses"]
    make_waypoint_unready(store, "default", "waypoint")
    gw = store.get(find_kind("gateway"), "default", "waypoint")
    assert gw["status"]["addresses"] == before
    assert gateway_conditions(store, "default", "waypoint")["Programmed"]["status"] == "False"


def test_gateway_hbone_listener_status(store):
    apply(store, WORLD)
    gw = store.get(find_kind("gateway"), "default", "waypoint")
    (listener,) = gw["status"]["listeners"]
    assert listener["name"] == "mesh"
    conds = {c["type"]: c for c in listener["conditions"]}
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == ("True", "Accepted")
    assert conds["Programmed"]["status"] == "True"
    assert {k["kind"] for k in listener["supportedKinds"]} == {"HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute"}


@pytest.mark.parametrize("listener", [
    "{name: http, port: 80, protocol: HTTP}",
    "{name: mesh, port: 15008, protocol: TCP}",
    "{name: hbone, port: 15009, protocol: HBONE}",
])
def test_gateway_non_hbone_listener_unsupported(store, listener):
    apply(store, gateway("bad", listener=listener).rstrip("-\n") + "\n")
    gw = store.get(find_kind("gateway"), "default", "bad")
    (status,) = gw["status"]["listeners"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"], conds["Accepted"]["message"]) == \
        ("False", "UnsupportedProtocol", 'Expected a single listener on port 15008 with protocol "HBONE"')
    assert status["supportedKinds"] == []


def test_waypoint_without_hbone_listener_is_not_programmed_and_binds_nothing(store):
    apply(store, WORLD + gateway("bad", listener="{name: http, port: 80, protocol: HTTP}"))
    make_waypoint_ready(store, "default", "bad")  # its replica runs; the Gateway is still unusable
    gw = store.get(find_kind("gateway"), "default", "bad")
    conds = {c["type"]: c for c in gw["status"]["conditions"]}
    assert (conds["Programmed"]["status"], conds["Programmed"]["reason"]) == ("False", "Invalid")
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == ("False", "ListenersNotValid")
    assert "addresses" not in gw["status"]
    set_labels(store, "svc", "default", "reviews", {USE: "bad"})
    d = decide(store, *SVC)
    assert (d.reason, d.ready) == (NOT_READY, False)
    assert "15008" in d.rules[-1]


def test_gateway_extra_listener_unsupported_hbone_listener_accepted(store):
    apply(store, """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: two, namespace: default}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
  - {name: http, port: 80, protocol: HTTP}
""")
    gw = store.get(find_kind("gateway"), "default", "two")
    by_name = {li["name"]: {c["type"]: c for c in li["conditions"]} for li in gw["status"]["listeners"]}
    assert by_name["mesh"]["Accepted"]["status"] == "True"
    assert (by_name["http"]["Accepted"]["status"], by_name["http"]["Accepted"]["reason"]) == \
        ("False", "UnsupportedProtocol")


def test_non_waypoint_gateway_gets_no_waypoint_objects_or_status(store):
    apply(store, WORLD + EXTRA["other-class"])
    gw = store.get(find_kind("gateway"), "default", "other")
    assert not conditions(gw)
    names = {b["metadata"]["name"] for kind in ("svc", "deploy", "sa") for b in store.list(find_kind(kind), "default")}
    assert "other" not in names


def test_waypoint_objects_created_with_gateway(store):
    apply(store, WORLD)
    for kind in ("svc", "deploy", "sa"):
        body = store.get(find_kind(kind), "default", "waypoint")
        (ref,) = body["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"]) == ("Gateway", "waypoint")
        assert body["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    svc = store.get(find_kind("svc"), "default", "waypoint")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["mesh"]["port"] == 15008 and ports["mesh"]["appProtocol"] == "hbone"
    assert ports["status-port"]["port"] == 15021
    assert svc["metadata"]["labels"]["gateway.istio.io/managed"] == "istio.io-mesh-controller"
    assert len(waypoint_pods(store, "default", "waypoint")) == 1


def test_gateway_class_status(store):
    gc = store.get(find_kind("gatewayclass"), "", "istio-waypoint")
    assert gc["spec"]["controllerName"] == "istio.io/mesh-controller"
    (cond,) = conditions(gc)
    assert (cond["type"], cond["status"], cond["reason"], cond["message"]) == \
        ("Accepted", "True", "Accepted", "Handled by Istio controller")


def test_waypoint_name_override(store):
    """gateway.istio.io/name-override names the Deployment and Service; the label still names the Gateway."""
    apply(store, """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
  annotations: {gateway.istio.io/name-override: custom-wp}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default, labels: {istio.io/use-waypoint: gw}}
spec: {ports: [{port: 80}]}
""")
    assert store.get(find_kind("deploy"), "default", "custom-wp")
    svc = store.get(find_kind("svc"), "default", "custom-wp")
    assert bound_condition(store, *SVC)["message"] == 'waypoint "default/gw" is not ready'
    assert gateway_conditions(store, "default", "gw")["Programmed"]["message"] == (
        'Failed to assign to any requested addresses: no instances found for hostname '
        '"custom-wp.default.svc.cluster.local"')
    make_waypoint_ready(store, "default", "gw")
    assert bound_condition(store, *SVC)["message"] == "Successfully attached to waypoint default/gw" + NOT_USING
    assert gateway_conditions(store, "default", "gw")["Programmed"]["message"] == (
        "Resource programmed, assigned to service(s) custom-wp.default.svc.cluster.local:15008")
    assert store.get(find_kind("gateway"), "default", "gw")["status"]["addresses"] == [
        {"type": "IPAddress", "value": svc["spec"]["clusterIP"]},
        {"type": "Hostname", "value": "custom-wp.default.svc.cluster.local"}]
    d = decide(store, "Service", "default", "custom-wp")
    assert (d.reason, d.waypoint) == (NO_WAYPOINT, None)


def test_gateway_spec_change_updates_status_and_service(store):
    apply(store, WORLD)
    make_waypoint_ready(store, "default", "waypoint")
    two = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
  - {name: http, port: 80, protocol: HTTP}
"""
    assert [r.action for r in apply(store, two)] == ["configured"]
    gw = store.get(find_kind("gateway"), "default", "waypoint")
    assert gw["metadata"]["generation"] == 2
    assert {c["observedGeneration"] for c in conditions(gw)} == {2}
    by_name = {li["name"]: {c["type"]: c for c in li["conditions"]} for li in gw["status"]["listeners"]}
    assert by_name["mesh"]["Accepted"]["status"] == "True"
    assert by_name["http"]["Accepted"]["reason"] == "UnsupportedProtocol"
    ports = [(p["name"], p["port"]) for p in store.get(find_kind("svc"), "default", "waypoint")["spec"]["ports"]]
    assert ports == [("status-port", 15021), ("mesh", 15008), ("http", 80)]
