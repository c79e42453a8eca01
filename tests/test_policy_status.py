"""AuthorizationPolicy status conditions, as istiod writes them (ZtunnelAccepted / WaypointAccepted)."""
from __future__ import annotations

from pathlib import Path

import pytest

from meshway.model import find_kind, load_yaml
from meshway.store import Store

BASE = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default, labels: {istio.io/use-waypoint: waypoint}}
spec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"""

CASES = {
    "l4-allow": ("selector: {matchLabels: {app: reviews}}\n  rules: [{from: [{source: {namespaces: [default]}}]}]",
                 ("ZtunnelAccepted", "True", "Accepted", "attached to ztunnel")),
    "l7-allow": ("selector: {matchLabels: {app: reviews}}\n  rules: [{to: [{operation: {methods: [GET], paths: [/a]}}]}]",
                 ("ZtunnelAccepted", "True", "UnsupportedValue",
                  "ztunnel does not support HTTP attributes (found: methods, paths). In ambient mode you must use a "
                  "waypoint proxy to enforce HTTP rules. Within an ALLOW policy, rules matching HTTP attributes are "
                  "omitted. This will be more restrictive than requested.")),
    "l7-deny": ("action: DENY\n  rules: [{when: [{key: \"request.headers[x-user]\", values: [a]}]}]",
                ("ZtunnelAccepted", "True", "UnsupportedValue",
                 "ztunnel does not support HTTP attributes (found: request.headers[x-user]). In ambient mode you must "
                 "use a waypoint proxy to enforce HTTP rules. DENY policy with HTTP attributes is enforced without the "
                 "HTTP rules. This will be more restrictive than requested.")),
    "custom": ("action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]",
               ("ZtunnelAccepted", "False", "UnsupportedValue", "ztunnel does not support the CUSTOM action")),
    "gateway-ref": ("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  rules: [{}]",
                    ("WaypointAccepted", "True", "Accepted", "bound to default/waypoint")),
    "bound-service": ("targetRefs: [{kind: Service, group: \"\", name: ratings}]\n  rules: [{}]",
                      ("WaypointAccepted", "True", "Accepted", "bound to default/waypoint")),
    "unbound-service": ("targetRefs: [{kind: Service, group: \"\", name: reviews}]\n  rules: [{}]",
                        ("WaypointAccepted", "False", "AncestorNotBound",
                         "Service default/reviews is not bound to a waypoint")),
    "missing-service": ("targetRefs: [{kind: Service, group: \"\", name: ghost}]\n  rules: [{}]",
                        ("WaypointAccepted", "False", "TargetNotFound", "Service default/ghost was not found")),
    "partly": ("targetRefs: [{kind: Service, group: \"\", name: ratings}, {kind: Service, group: \"\", name: ghost}]\n"
               "  rules: [{}]",
               ("WaypointAccepted", "True", "PartiallyInvalid", "Invalid targetRefs: Service default/ghost was not found")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_status(case: str, tmp_path: Path) -> None:
    spec, expected = CASES[case]
    store = Store(tmp_path / "s")
    doc = f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  {spec}\n"
    store.apply(load_yaml(BASE + "---\n" + doc, "p.yaml"))
    cond = store.get(find_kind("ap"), "default", "p")["status"]["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"], cond["message"]) == expected


def test_status_follows_the_binding(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.apply(load_yaml(BASE + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                 "metadata: {name: p, namespace: default}\nspec:\n  " +
                          CASES["unbound-service"][0] + "\n", "p.yaml"))
    store.label(find_kind("svc"), "default", ["reviews"], None, {"istio.io/use-waypoint": "waypoint"}, [])
    cond = store.get(find_kind("ap"), "default", "p")["status"]["conditions"][0]
    assert (cond["reason"], cond["message"]) == ("Accepted", "bound to default/waypoint")


CUSTOM_CASES = {
    "audit-selector": ("selector: {matchLabels: {app: reviews}}\n  action: AUDIT\n  rules: [{}]",
                       ("ZtunnelAccepted", "False", "UnsupportedValue", "ztunnel does not support the AUDIT action")),
    "audit-waypoint": ("targetRefs: [{kind: Service, group: \"\", name: ratings}]\n  action: AUDIT\n  rules: [{}]",
                       ("WaypointAccepted", "True", "Accepted", "bound to default/waypoint")),
    "dry-run-selector": ("selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules: [{}]",
                         ("ZtunnelAccepted", "False", "UnsupportedValue",
                          "found policy \"default/p\" using dry-run annotation, but support for ambient dry-run "
                          "authorizationPolicies isn't enabled")),
}


@pytest.mark.parametrize("case", sorted(CUSTOM_CASES))
def test_audit_and_dry_run_status(case: str, tmp_path: Path) -> None:
    spec, expected = CUSTOM_CASES[case]
    store = Store(tmp_path / "s")
    annotations = ", annotations: {istio.io/dry-run: \"true\"}" if case.startswith("dry-run") else ""
    doc = (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
           f"metadata: {{name: p, namespace: default{annotations}}}\nspec:\n  {spec}\n")
    store.apply(load_yaml(BASE + "---\n" + doc, "p.yaml"))
    cond = store.get(find_kind("ap"), "default", "p")["status"]["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"], cond["message"]) == expected


def test_dry_run_waypoint_policy_also_gets_istiods_ztunnel_condition(tmp_path: Path) -> None:
    """istiod checks the dry-run annotation before it skips targetRefs policies for ztunnel, so a
    waypoint policy in dry-run carries a (misleading, but Istio's) ZtunnelAccepted=False too."""
    store = Store(tmp_path / "s")
    store.apply(load_yaml(BASE + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                 "metadata: {name: p, namespace: default, annotations: {istio.io/dry-run: \"true\"}}\n"
                                 "spec:\n  targetRefs: [{kind: Service, group: \"\", name: ratings}]\n"
                                 "  action: DENY\n  rules: [{}]\n", "p.yaml"))
    conds = {c["type"]: (c["status"], c["reason"]) for c in
             store.get(find_kind("ap"), "default", "p")["status"]["conditions"]}
    assert conds == {"WaypointAccepted": ("True", "Accepted"), "ZtunnelAccepted": ("False", "UnsupportedValue")}


MESH_CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp: {service: ext-authz.default.svc.cluster.local, port: "8000"}
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: default}
spec: {selector: {app: ext-authz}, ports: [{name: http, port: 8000}]}
"""


def test_custom_policy_status_follows_the_mesh_config(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.apply(load_yaml(BASE + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                 "metadata: {name: p, namespace: default}\nspec:\n"
                                 "  targetRefs: [{kind: Service, group: \"\", name: ratings}]\n"
                                 "  action: CUSTOM\n  provider: {name: sample-ext-authz-http}\n"
                                 "  rules: [{to: [{operation: {paths: [/headers]}}]}]\n", "p.yaml"))

    def condition() -> tuple:
        cond = store.get(find_kind("ap"), "default", "p")["status"]["conditions"][0]
        return cond["type"], cond["status"], cond["reason"], cond["message"]

    assert condition() == ("WaypointAccepted", "False", "Invalid",
                           'CUSTOM action cannot use extension provider "sample-ext-authz-http": available providers '
                           'are [] but found "sample-ext-authz-http". Requests matching this policy\'s rules are '
                           "denied (fail closed, as istiod does)")
    store.apply(load_yaml(MESH_CONFIG, "mesh.yaml"))
    assert condition() == ("WaypointAccepted", "True", "Accepted", "bound to default/waypoint")
    store.delete([(find_kind("svc"), "default", "ext-authz")])
    assert condition()[1:3] == ("False", "Invalid")
    assert "could not find service ext-authz.default.svc.cluster.local:8000 in Istio service registry" in condition()[3]
