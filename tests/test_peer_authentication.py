"""PeerAuthentication for node proxies (pure, tables): istiod's validation errors; which policy
decides a workload's mTLS mode (mesh > namespace > workload, UNSET inherits, DISABLE is PERMISSIVE,
the oldest per level, root-namespace selectors ignored, port-level exceptions) and the ztunnel
policy it becomes; the RBAC DENY on the plaintext chain; the node proxy's config accepted by Envoy."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from conftest import apply
from xds_support import ENVOY, build_store, view_of

from meshway.ca import CertificateAuthority
from meshway.cli import ztunneldump as Z
from meshway.cli.explain import decision_json, write_decision, write_peer_mtls
from meshway.cli.printers import COLUMNS
from meshway.ca.sds import SDS_ROOT, build_certificate_secret, build_root_secret
from meshway.model import InputError, find_kind, load_yaml
from meshway.model.istio import PeerAuthentication
from meshway.mesh.explain import find_decision, find_peer_mtls
from meshway.mesh.policy_status import build_peer_authn_conditions
from meshway.mesh.request import parse_request
from meshway.mesh.peer_authentication import MtlsDecision, decide_peer_authentication, describe
from meshway.xds import protos as P
from meshway.xds.build_peer_authn import build_peer_authn_filter, build_peer_authn_permissions
from meshway.xds.build_ztunnel import NodeProxy, build_ztunnel_config
from meshway.xds.simulate import simulate
from meshway.xds.validate import run_validate


def pa(ns: str, name: str, mode: str | None = None, selector: dict | None = None, ports: dict | None = None,
       created: str = "2026-01-01T00:00:00Z") -> PeerAuthentication:
    spec: dict = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return PeerAuthentication.model_validate({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec})


MESH_STRICT = pa("istio-system", "default", "STRICT")
MESH_PERMISSIVE = pa("istio-system", "default", "PERMISSIVE")
NS_STRICT = pa("foo", "default", "STRICT")
NS_PERMISSIVE = pa("foo", "default", "PERMISSIVE")
NS_DISABLE = pa("foo", "default", "DISABLE")
NS_UNSET = pa("foo", "default")
APP = {"app": "a"}
STATIC = "istio-system/istio_converted_static_strict"
CONVERTED = "foo/converted_peer_authentication_wl"

# (case, policies, pod labels) -> (mode, port exceptions, ztunnel policy)
RESOLUTION = [
    ("nothing: PERMISSIVE", [], APP, ("PERMISSIVE", (), None)),
    ("mesh STRICT", [MESH_STRICT], APP, ("STRICT", (), STATIC)),
    ("mesh UNSET is PERMISSIVE", [pa("istio-system", "default")], APP, ("PERMISSIVE", (), None)),
    ("namespace STRICT", [NS_STRICT], APP, ("STRICT", (), STATIC)),
    ("namespace of another namespace", [pa("bar", "default", "STRICT")], APP, ("PERMISSIVE", (), None)),
    ("namespace PERMISSIVE over mesh STRICT", [MESH_STRICT, NS_PERMISSIVE], APP, ("PERMISSIVE", (), None)),
    ("namespace DISABLE over mesh STRICT: PERMISSIVE", [MESH_STRICT, NS_DISABLE], APP, ("PERMISSIVE", (), None)),
    ("namespace UNSET inherits mesh STRICT", [MESH_STRICT, NS_UNSET], APP, ("STRICT", (), STATIC)),
    ("namespace STRICT over mesh PERMISSIVE", [MESH_PERMISSIVE, NS_STRICT], APP, ("STRICT", (), STATIC)),
    ("workload STRICT", [pa("foo", "wl", "STRICT", APP)], APP, ("STRICT", (), STATIC)),
    ("workload selector not matching", [pa("foo", "wl", "STRICT", {"app": "b"})], APP, ("PERMISSIVE", (), None)),
    ("workload PERMISSIVE over namespace STRICT", [NS_STRICT, pa("foo", "wl", "PERMISSIVE", APP)], APP,
     ("PERMISSIVE", (), None)),
    ("workload DISABLE over namespace STRICT", [NS_STRICT, pa("foo", "wl", "DISABLE", APP)], APP,
     ("PERMISSIVE", (), None)),
    ("workload UNSET inherits namespace STRICT", [NS_STRICT, pa("foo", "wl", None, APP)], APP,
     ("STRICT", (), STATIC)),
    ("root-namespace selector ignored", [pa("istio-system", "wl", "STRICT", APP)], APP, ("PERMISSIVE", (), None)),
    ("STRICT with a PERMISSIVE port", [pa("foo", "wl", "STRICT", APP, {9090: "PERMISSIVE"})], APP,
     ("STRICT", ((9090, "PERMISSIVE"),), CONVERTED)),
    ("STRICT with a DISABLE port", [pa("foo", "wl", "STRICT", APP, {9090: "DISABLE"})], APP,
     ("STRICT", ((9090, "PERMISSIVE"),), CONVERTED)),
    ("STRICT with a STRICT port: static", [pa("foo", "wl", "STRICT", APP, {9090: "STRICT"})], APP,
     ("STRICT", (), STATIC)),
    ("PERMISSIVE with a STRICT port", [pa("foo", "wl", "PERMISSIVE", APP, {8080: "STRICT", 9090: "PERMISSIVE"})],
     APP, ("PERMISSIVE", ((8080, "STRICT"),), CONVERTED)),
    ("UNSET under namespace STRICT, PERMISSIVE port", [NS_STRICT, pa("foo", "wl", None, APP, {9090: "PERMISSIVE"})],
     APP, ("STRICT", ((9090, "PERMISSIVE"),), CONVERTED)),
    ("UNSET under nothing, STRICT port", [pa("foo", "wl", None, APP, {8080: "STRICT"})], APP,
     ("PERMISSIVE", ((8080, "STRICT"),), CONVERTED)),
    ("UNSET port inherits", [pa("foo", "wl", "STRICT", APP, {9090: "UNSET"})], APP, ("STRICT", (), STATIC)),
    ("oldest namespace policy wins", [pa("foo", "new", "PERMISSIVE", created="2026-02-01T00:00:00Z"),
                                      pa("foo", "old", "STRICT", created="2026-01-01T00:00:00Z")], APP,
     ("STRICT", (), STATIC)),
    ("oldest workload policy wins", [pa("foo", "wl", "STRICT", APP, created="2026-01-01T00:00:00Z"),
                                     pa("foo", "newer", "PERMISSIVE", {"app": "a"}, created="2026-03-01T00:00:00Z")],
     APP, ("STRICT", (), STATIC)),
]


@pytest.mark.parametrize("case,policies,labels,expected", RESOLUTION, ids=[c[0] for c in RESOLUTION])
def test_resolution(case, policies, labels, expected) -> None:
    decision = decide_peer_authentication(policies, "foo", labels)
    assert (decision.mode, decision.ports, decision.policy) == expected


def test_decision_record_names_the_policies_and_notes_disable() -> None:
    decision = decide_peer_authentication([MESH_STRICT, NS_UNSET, pa("foo", "wl", "DISABLE", APP, {80: "STRICT"})],
                                          "foo", APP)
    assert [(a.level, a.key, a.mode) for a in decision.applied] == [
        ("mesh", "istio-system/default", "STRICT"), ("namespace", "foo/default", "UNSET"),
        ("workload", "foo/wl", "DISABLE")]
    assert decision.mode_of(80) == "STRICT" and decision.mode_of(81) == "PERMISSIVE"
    assert decision.notes == ("foo/wl: DISABLE is PERMISSIVE on ztunnel: plaintext is accepted, HBONE between mesh "
                              "workloads stays mTLS",)
    assert describe(decision) == ("PERMISSIVE (mesh istio-system/default; namespace foo/default UNSET: inherited; "
                                  "workload foo/wl; port 80 STRICT)")
    assert describe(MtlsDecision()) == "PERMISSIVE (no PeerAuthentication: the default)"


def test_a_pod_in_the_root_namespace_gets_the_mesh_policy_only() -> None:
    decision = decide_peer_authentication([MESH_STRICT, pa("istio-system", "wl", "PERMISSIVE", APP)],
                                          "istio-system", APP)
    assert (decision.mode, [a.level for a in decision.applied]) == ("STRICT", ["mesh"])


INVALID = [
    ({"portLevelMtls": {9090: {"mode": "STRICT"}}}, "portLevelMtls requires selector"),
    ({"selector": {"matchLabels": {}}, "portLevelMtls": {9090: {"mode": "STRICT"}}}, "portLevelMtls requires selector"),
    ({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {}}, "must have at least one element"),
    ({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {0: {"mode": "STRICT"}}},
     "port must be between 1-65535"),
    ({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {70000: {"mode": "STRICT"}}},
     "port must be between 1-65535"),
    ({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"http": {"mode": "STRICT"}}},
     "expected a port number"),
    ({"mtls": {"mode": "LOOSE"}}, "Unsupported value: 'LOOSE'"),
    ({"mtls": {"mode": "STRICT", "extra": 1}}, "extra"),
    ({"selector": {"matchLabels": {"app": "a*"}}}, "wildcard not allowed"),
]


@pytest.mark.parametrize("spec,message", INVALID)
def test_validation(spec: dict, message: str) -> None:
    doc = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
           "metadata": {"name": "x", "namespace": "foo"}, "spec": spec}
    with pytest.raises(InputError) as err:
        load_yaml(yaml.safe_dump(doc), "pa.yaml")
    assert message in str(err.value)


def test_port_keys_from_kubernetes_json_are_ports() -> None:
    (manifest,) = load_yaml('{"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication", '
                            '"metadata": {"name": "x", "namespace": "foo"}, "spec": {"selector": {"matchLabels": '
                            '{"app": "a"}}, "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}}}}', "pa.json")
    assert manifest.body["spec"]["portLevelMtls"] == {"9090": {"mode": "PERMISSIVE"}}
    model = PeerAuthentication.model_validate(manifest.body, strict=False)
    assert list(model.spec.portLevelMtls) == [9090]


PERMISSIONS = [
    (MtlsDecision(), None, []),
    (MtlsDecision("STRICT"), STATIC, [{"any": True}]),
    (MtlsDecision("STRICT", ((9090, "PERMISSIVE"), (9091, "PERMISSIVE"))), CONVERTED,
     [{"and_rules": {"rules": [{"not_rule": {"destination_port": 9090}}, {"not_rule": {"destination_port": 9091}}]}}]),
    (MtlsDecision("PERMISSIVE", ((8080, "STRICT"),)), CONVERTED, [{"destination_port": 8080}]),
]


@pytest.mark.parametrize("decision,policy,permissions", PERMISSIONS)
def test_plaintext_deny_permissions(decision: MtlsDecision, policy: str | None, permissions: list) -> None:
    if decision.ports:  # a converted policy is named after the workload policy
        decision = MtlsDecision(decision.mode, decision.ports, decide_peer_authentication(
            [pa("foo", "wl", "STRICT", APP)], "foo", APP).applied)
    assert decision.policy == policy
    filters = build_peer_authn_filter(decision)
    if policy is None:
        assert filters == []
        return
    assert build_peer_authn_permissions(decision) == permissions
    (f,) = filters
    ns, name = policy.split("/")
    rules = f["typed_config"]["rules"]
    assert f["name"] == "envoy.filters.network.rbac" and rules["action"] == "DENY"
    assert rules["policies"] == {f"ns[{ns}]-policy[{name}]-rule[0]": {"permissions": permissions,
                                                                       "principals": [{"any": True}]}}


MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a-1, namespace: foo, labels: {app: a}}
spec: {containers: [{name: a, image: echo, ports: [{containerPort: 8080}, {containerPort: 9090}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b-1, namespace: foo, labels: {app: b}}
spec: {containers: [{name: b, image: echo}]}
"""
POLICIES = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: wl, namespace: foo}
spec:
  selector: {matchLabels: {app: a}}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
"""


def node_config(tmp_path: Path, *docs: str) -> tuple[dict, set]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = []
    for i, text in enumerate(docs):
        files.append(tmp_path / f"{i}.yaml")
        files[-1].write_text(text)
    store = build_store(tmp_path / "s", files)
    view = view_of(store)
    pod = view.pods[("foo", "a-1")]
    return build_ztunnel_config(view, NodeProxy("ztunnel~test", pod.node))


def plaintext_chains(resources: dict) -> dict[str, list[str]]:
    listener = resources[P.LISTENER]["ztunnel_inbound_plaintext"]
    return {c["name"]: [f["name"] for f in c["filters"]] for c in listener["filter_chains"]}


def test_node_proxy_refuses_plaintext_only_where_strict(tmp_path: Path) -> None:
    before, _ = node_config(tmp_path / "1", MESH)
    assert plaintext_chains(before) == {"plaintext|foo/a-1": ["envoy.filters.network.tcp_proxy"],
                                        "plaintext|foo/b-1": ["envoy.filters.network.tcp_proxy"]}
    after, _ = node_config(tmp_path / "2", MESH, POLICIES)
    assert plaintext_chains(after) == {
        "plaintext|foo/a-1": ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"],
        "plaintext|foo/b-1": ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]}
    chains = {c["name"]: c for c in after[P.LISTENER]["ztunnel_inbound_plaintext"]["filter_chains"]}
    policies = {name: c["filters"][0]["typed_config"]["rules"]["policies"] for name, c in chains.items()}
    assert policies == {
        "plaintext|foo/a-1": {"ns[foo]-policy[converted_peer_authentication_wl]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [{"not_rule": {"destination_port": 9090}}]}}],
            "principals": [{"any": True}]}},
        "plaintext|foo/b-1": {"ns[istio-system]-policy[istio_converted_static_strict]-rule[0]": {
            "permissions": [{"any": True}], "principals": [{"any": True}]}}}
    # HBONE is never refused by PeerAuthentication: the inbound chains are the same as without it
    assert before[P.LISTENER]["ztunnel_inbound"] == after[P.LISTENER]["ztunnel_inbound"]


def test_envoy_accepts_the_node_proxy_config(tmp_path: Path) -> None:
    resources, identities = node_config(tmp_path, MESH, POLICIES)
    ca = CertificateAuthority(tmp_path / "ca")
    messages = {t: {n: P.to_dict(P.to_message(t, r)) for n, r in items.items()} for t, items in resources.items()}
    secrets = {}
    for identity in identities:
        ns, sa = identity.split("/ns/", 1)[1].split("/sa/")
        secret = build_certificate_secret(ca.issue(ns, sa))
        secret.name = identity
        secrets[identity] = P.to_dict(secret)
    secrets[SDS_ROOT] = P.to_dict(build_root_secret(ca.root_pem()))
    messages[P.SECRET] = secrets
    ok, output = run_validate(messages, ENVOY)
    assert ok, output


CONDITIONS = [
    ("namespace STRICT", NS_STRICT, [NS_STRICT], ("True", "Accepted", "attached to ztunnel")),
    ("DISABLE", NS_DISABLE, [NS_DISABLE], ("True", "UnsupportedValue", "ztunnel does not support DISABLE mode")),
    ("DISABLE port", pa("foo", "wl", "STRICT", APP, {80: "DISABLE"}), [], ("True", "UnsupportedValue", "DISABLE")),
    ("root selector", pa("istio-system", "wl", "STRICT", APP), [], ("False", "Ignored", "ignored when deployed in the "
                                                                                        "root namespace")),
    ("newer namespace policy", pa("foo", "new", "PERMISSIVE", created="2026-02-01T00:00:00Z"), [NS_STRICT],
     ("False", "Ignored", "the older PeerAuthentication foo/default with the same namespace scope applies")),
    ("newer mesh policy", pa("istio-system", "new", "PERMISSIVE", created="2026-02-01T00:00:00Z"), [MESH_STRICT],
     ("False", "Ignored", "istio-system/default with the same mesh scope")),
    ("newer workload policy, same selector", pa("foo", "wl2", "PERMISSIVE", APP, created="2026-02-01T00:00:00Z"),
     [pa("foo", "wl", "STRICT", APP)], ("False", "Ignored", "foo/wl with the same workload selector scope")),
    ("older one is the accepted one", NS_STRICT, [pa("foo", "new", "PERMISSIVE", created="2026-02-01T00:00:00Z")],
     ("True", "Accepted", "attached to ztunnel")),
    ("other selector", pa("foo", "wl2", "PERMISSIVE", {"app": "b"}, created="2026-02-01T00:00:00Z"),
     [pa("foo", "wl", "STRICT", APP)], ("True", "Accepted", "attached to ztunnel")),
]


@pytest.mark.parametrize("case,policy,others,expected", CONDITIONS, ids=[c[0] for c in CONDITIONS])
def test_ztunnel_accepted_condition(case, policy, others, expected) -> None:
    (cond,) = build_peer_authn_conditions(policy, [policy, *others])
    assert cond["type"] == "ZtunnelAccepted"
    assert (cond["status"], cond["reason"]) == expected[:2] and expected[2] in cond["message"]


def test_the_store_writes_ztunnel_accepted(store) -> None:
    apply(store, MESH + "---" + POLICIES.replace("mode: STRICT", "mode: DISABLE"))
    conds = {b["metadata"]["name"]: b["status"]["conditions"] for b in store.list(find_kind("pa"), "foo")}
    assert {n: [(c["type"], c["status"], c["reason"]) for c in cs] for n, cs in conds.items()} == {
        "default": [("ZtunnelAccepted", "True", "UnsupportedValue")],
        "wl": [("ZtunnelAccepted", "True", "Accepted")]}


def test_ztunnel_config_lists_the_converted_policies() -> None:
    """`meshway ztunnel-config policies`: what istiod would send ztunnel for the node's local pods."""
    data = Path(__file__).resolve().parent / "data" / "ztunnel_node"
    load = lambda name: json.loads((data / f"{name}.json").read_text())  # noqa: E731
    peer_authns = [yaml.safe_load(d) for d in (NS_STRICT_DOC, PRODUCTPAGE_PORT_DOC)]
    dump = Z.build_ztunnel_dump(load("config_dump"), load("certs"), load("pods"), load("authorizationpolicies"),
                                peer_authns=peer_authns)
    converted = {p["name"]: p for p in dump["policies"] if "converted" in p["name"]}
    assert converted == {
        "istio_converted_static_strict": {
            "name": "istio_converted_static_strict", "namespace": "istio-system", "scope": "WorkloadSelector",
            "action": "Deny", "rules": [[[{"notPrincipals": [{"Presence": {}}]}]]]},
        "converted_peer_authentication_productpage": {
            "name": "converted_peer_authentication_productpage", "namespace": "default", "scope": "WorkloadSelector",
            "action": "Deny", "rules": [[[{"notPrincipals": [{"Presence": {}}]}], [{"notDestinationPorts": [9080]}]]]}}
    by_name = {w["name"]: w.get("authorizationPolicies", []) for w in dump["workloads"] if w["name"]}
    assert "default/converted_peer_authentication_productpage" in by_name["productpage-v1-zjt5brpp7l-bznpt"]
    assert "istio-system/istio_converted_static_strict" in by_name["curl-9pd2p9rgsd-jqs9x"]
    rows = [line.split() for line in Z.write_policies(dump).splitlines()]
    assert ["istio-system", "istio_converted_static_strict", "Deny", "WorkloadSelector"] in rows
    assert ["default", "converted_peer_authentication_productpage", "Deny", "WorkloadSelector"] in rows


NS_STRICT_DOC = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
"""
PRODUCTPAGE_PORT_DOC = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: productpage, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: productpage}}
  portLevelMtls: {9080: {mode: PERMISSIVE}}
"""


def test_explain_shows_the_effective_mode(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH + "---" + POLICIES)
    view = view_of(build_store(tmp_path / "s", [tmp_path / "mesh.yaml"]))
    decision = find_decision(view, "pod/a-1", "foo")
    peer = find_peer_mtls(view, decision)
    assert "Peer mTLS:    STRICT (namespace foo/default; workload foo/wl UNSET: inherited; port 9090 PERMISSIVE)\n" \
        in write_decision(decision, peer=peer)
    assert decision_json(decision, peer=peer)["peer_mtls"] == [{
        "pod": "a-1", "mode": "STRICT", "ports": {"9090": "PERMISSIVE"},
        "ztunnel_policy": "foo/converted_peer_authentication_wl",
        "policies": ["namespace foo/default", "workload foo/wl"]}]
    assert write_peer_mtls([("a-1", peer[0][1]), ("b-1", MtlsDecision("STRICT", (), peer[0][1].applied[:1]))]) == [
        "Peer mTLS:", "  a-1: STRICT (namespace foo/default; workload foo/wl UNSET: inherited; port 9090 PERMISSIVE)",
        "  b-1: STRICT (namespace foo/default)"]
    (tmp_path / "plain.yaml").write_text(MESH)
    view = view_of(build_store(tmp_path / "s2", [tmp_path / "plain.yaml"]))
    assert find_peer_mtls(view, find_decision(view, "pod/a-1", "foo")) == []  # no policy: no line


def test_get_shows_the_mode_column() -> None:
    body = yaml.safe_load(NS_STRICT_DOC)
    assert [(name, get(body)) for name, get in COLUMNS["PeerAuthentication"]] == [("MODE", "STRICT")]


def test_request_simulation_refuses_the_plaintext_caller_under_strict(tmp_path: Path) -> None:
    """`explain --request` reads the node proxy's plaintext chain, the PeerAuthentication DENY included."""
    (tmp_path / "mesh.yaml").write_text(MESH + """---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: foo}
spec: {selector: {app: a}, ports: [{name: http, port: 80, targetPort: 8080}, {name: other, port: 90, targetPort: 9090}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: outside}
spec: {containers: [{name: c, image: curlimages/curl}]}
""")
    store = build_store(tmp_path / "s", [tmp_path / "mesh.yaml"])

    def outcome(source: str) -> dict:
        view = view_of(store)
        pod = next(p for p in view.pods.values() if p.name == source)
        return simulate(view, parse_request("GET http://a.foo:80/"), pod, time.time())["outcome"]

    assert outcome("outsider")["result"] == "allowed"
    apply(store, POLICIES)
    refused = outcome("outsider")
    assert refused["result"] == "denied", refused
    assert "istio_converted_static_strict" not in json.dumps(refused)  # a-1's own converted policy decides
    assert "converted_peer_authentication_wl" in json.dumps(refused)
    assert outcome("b-1")["result"] == "allowed"  # a mesh caller: HBONE


def test_kubernetes_status_write_and_watch() -> None:
    """On Kubernetes the controller applies `ZtunnelAccepted` through the status subresource (as for
    AuthorizationPolicy), and the control plane watches PeerAuthentications."""
    from meshway.kube.controller import POLICY_REPORTER, plan_status_writes
    from meshway.kube.source import plan_watches
    from meshway.mesh.status_plan import StatusUpdate, plan_statuses

    body = yaml.safe_load(NS_STRICT_DOC)
    (update,) = [u for u in plan_statuses({"PeerAuthentication": [body]}, "2026-12-03T00:00:00Z")
                 if u.kind == "PeerAuthentication"]
    (write,) = plan_status_writes([StatusUpdate("PeerAuthentication", body, update.status)])
    assert (write.kind, write.namespace, write.name, write.method, write.manager) == \
        ("PeerAuthentication", "default", "default", "apply", POLICY_REPORTER)
    assert [c["type"] for c in write.body["status"]["conditions"]] == ["ZtunnelAccepted"]
    assert any("peerauthentications" in w.path for w in plan_watches())
