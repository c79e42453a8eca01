"""`meshway install` / `meshway uninstall` (meshway/kube/install.py, meshway/cli/install.py).

The plan is tested without a cluster: the shipped CRD files against VERSIONS, the objects and their
order, the GatewayClass, the RBAC rules (least privilege), the URL paths; the shell against a fake
API (waits, timeouts, not-found, errors) and against nothing at all (an unreachable API server).

`test_install_on_a_real_api_server` runs the real etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl and istioctl that scripts/build-kubernetes builds. Without them it is skipped,
naming what is missing; with MESHWAY_REQUIRE_E2E=1 it fails instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshway import labels as L
from meshway.kube import install as I
from meshway.kube.client import ApiError
from meshway.model.registry import KINDS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = I.load_crd_documents()
PLAN = I.plan_install(DOCS)
BY_REF = {s.ref: s for s in PLAN}
CRDS = {s.name: s.body for s in PLAN if s.kind == I.CRD}
ROLE = BY_REF["clusterrole.rbac.authorization.k8s.io/meshway"].body
NS_ROLE = BY_REF["role.rbac.authorization.k8s.io/meshway"].body
GATEWAY_API_CRDS = {"gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies",
                    "listenersets", "tcproutes", "tlsroutes", "udproutes"}
ISTIO_CRDS = {"destinationrules.networking.istio.io", "envoyfilters.networking.istio.io",
              "gateways.networking.istio.io", "proxyconfigs.networking.istio.io", "serviceentries.networking.istio.io",
              "sidecars.networking.istio.io", "virtualservices.networking.istio.io",
              "workloadentries.networking.istio.io", "workloadgroups.networking.istio.io",
              "authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io",
              "requestauthentications.security.istio.io", "telemetries.telemetry.istio.io",
              "wasmplugins.extensions.istio.io", "trafficextensions.extensions.istio.io"}


# -- the package data -----------------------------------------------------------------------------
def test_every_shipped_file_is_listed_in_versions_with_its_sha256():
    entries = I.read_versions((I.CRD_DIR / "VERSIONS").read_text())
    assert sorted(p.name for p in I.CRD_DIR.iterdir()) == sorted([e.file for e in entries] + ["VERSIONS"])
    for e in entries:
        assert hashlib.sha256((I.CRD_DIR / e.file).read_bytes()).hexdigest() == e.sha256, e.file


def test_versions_name_the_pinned_modules():
    entries = I.read_versions((I.CRD_DIR / "VERSIONS").read_text())
    sums = (ROOT / "tools" / "istioctl" / "go.sum").read_text().split()
    istio_api = sums[sums.index("istio.io/api") + 1]  # the istio.io/api istioctl is built against
    assert {e.module for e in entries} == {"sigs.k8s.io/gateway-api@v1.6.3", f"istio.io/api@{istio_api}"}
    assert all(e.source.startswith("config/crd/standard/") for e in entries if e.module.startswith("sigs.k8s.io"))
    assert [e.source for e in entries if e.module.startswith("istio.io")] == [
        "kubernetes/customresourcedefinitions.gen.yaml"]


def test_the_package_data_is_declared_for_the_wheel():
    assert '"kube/crds/*"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("line", [
    "sigs.k8s.io/gateway-api@v1.6.3 config/crd/standard/x.yaml x.yaml",
    "m@v p f NOT-A-SHA",
])
def test_versions_rejects_a_malformed_line(line):
    with pytest.raises(ValueError, match="VERSIONS line 1"):
        I.read_versions(line)


# -- the plan -------------------------------------------------------------------------------------
def test_the_gateway_api_and_istio_crds_are_all_there():
    assert set(CRDS) == {f"{p}.gateway.networking.k8s.io" for p in GATEWAY_API_CRDS} | ISTIO_CRDS


def test_every_kind_meshway_serves_has_a_crd_or_is_built_in():
    for info in KINDS:
        if info.group in ("", "apps"):
            continue
        crd = CRDS[f"{info.plural}.{info.group}"]
        served = {v["name"] for v in crd["spec"]["versions"] if v["served"]}
        assert crd["spec"]["names"]["kind"] == info.kind
        assert info.versions[0] in served, (info.kind, served)


def test_gateway_api_crds_are_the_standard_channel_of_v1_6_3():
    # The safe-upgrades policy installed with them refuses experimental CRDs over standard ones.
    for name, crd in CRDS.items():
        if name.endswith(".gateway.networking.k8s.io"):
            annotations = crd["metadata"]["annotations"]
            assert annotations["gateway.networking.k8s.io/channel"] == "standard", name
            assert annotations["gateway.networking.k8s.io/bundle-version"] == "v1.6.3", name


def test_order_crds_then_upstream_policy_then_meshway_objects():
    assert [s.ref for s in PLAN[len(CRDS):]] == [
        "validatingadmissionpolicy.admissionregistration.k8s.io/safe-upgrades.gateway.networking.k8s.io",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/safe-upgrades.gateway.networking.k8s.io",
        "namespace/istio-system",
        "gatewayclass.gateway.networking.k8s.io/istio-waypoint",
        "serviceaccount/meshway",
        "clusterrole.rbac.authorization.k8s.io/meshway",
        "clusterrolebinding.rbac.authorization.k8s.io/meshway",
        "role.rbac.authorization.k8s.io/meshway",
        "rolebinding.rbac.authorization.k8s.io/meshway",
        "clusterrole.rbac.authorization.k8s.io/meshway-node",
        "clusterrolebinding.rbac.authorization.k8s.io/meshway-node",
        "serviceaccount/ztunnel",
        "daemonset.apps/ztunnel",
        "deployment.apps/istiod",
    ]
    assert all(s.kind == I.CRD for s in PLAN[:len(CRDS)])
    assert PLAN[0].name == "backendtlspolicies.gateway.networking.k8s.io"  # upstream's file order


def test_uninstall_is_install_reversed():
    assert [s.ref for s in I.plan_uninstall(DOCS)] == [s.ref for s in reversed(PLAN)]


@pytest.mark.parametrize("ref,path", [
    ("customresourcedefinition.apiextensions.k8s.io/gateways.gateway.networking.k8s.io",
     "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gateways.gateway.networking.k8s.io"),
    ("validatingadmissionpolicy.admissionregistration.k8s.io/safe-upgrades.gateway.networking.k8s.io",
     "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/safe-upgrades.gateway.networking.k8s.io"),
    ("namespace/istio-system", "/api/v1/namespaces/istio-system"),
    ("gatewayclass.gateway.networking.k8s.io/istio-waypoint",
     "/apis/gateway.networking.k8s.io/v1/gatewayclasses/istio-waypoint"),
    ("serviceaccount/meshway", "/api/v1/namespaces/istio-system/serviceaccounts/meshway"),
    ("clusterrole.rbac.authorization.k8s.io/meshway", "/apis/rbac.authorization.k8s.io/v1/clusterroles/meshway"),
    ("clusterrolebinding.rbac.authorization.k8s.io/meshway",
     "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/meshway"),
    ("role.rbac.authorization.k8s.io/meshway",
     "/apis/rbac.authorization.k8s.io/v1/namespaces/istio-system/roles/meshway"),
    ("rolebinding.rbac.authorization.k8s.io/meshway",
     "/apis/rbac.authorization.k8s.io/v1/namespaces/istio-system/rolebindings/meshway"),
])
def test_paths(ref, path):
    assert BY_REF[ref].path == path


@pytest.mark.parametrize("body", [
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}},
    {"apiVersion": "apiextensions.k8s.io/v1beta1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"}},
    {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {}},
])
def test_a_kind_the_plan_cannot_address_is_refused(body):
    with pytest.raises(ValueError, match="cannot install"):
        I.plan_step(body)


def test_the_waypoint_class_is_istiods():
    assert BY_REF["gatewayclass.gateway.networking.k8s.io/istio-waypoint"].body == {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "istio-waypoint"},
        "spec": {"controllerName": "istio.io/mesh-controller",
                 "description": "The default Istio waypoint GatewayClass"}}


def test_the_bindings_grant_the_roles_to_the_service_account():
    sa = {"kind": "ServiceAccount", "name": "meshway", "namespace": "istio-system"}
    for kind, role in (("clusterrolebinding", "ClusterRole"), ("rolebinding", "Role")):
        body = BY_REF[f"{kind}.rbac.authorization.k8s.io/meshway"].body
        assert body["subjects"] == [sa]
        assert body["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": "meshway"}
    assert BY_REF["serviceaccount/meshway"].namespace == "istio-system"


# -- RBAC: least privilege ------------------------------------------------------------------------
def grants(*roles: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for role in roles for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def test_no_wildcards_and_no_dangerous_verbs_or_resources():
    for group, resource, verb in grants(ROLE, NS_ROLE):
        assert "*" not in (group, resource, verb)
        assert verb not in ("escalate", "bind", "impersonate", "deletecollection", "get") or resource in ("leases", "secrets")
        assert resource not in ("customresourcedefinitions", "clusterroles", "roles",
                                "clusterrolebindings", "rolebindings", "pods/exec", "serviceaccounts/token")
        # a TokenReview only asks the API server whether a token is valid (the CA API checks callers so);
        # it grants nothing and reads no object
        assert resource != "tokenreviews" or (group, verb) == ("authentication.k8s.io", "create")


def test_every_kind_meshway_reads_is_listed_and_watched():
    read = {(g, r) for g, r, v in grants(ROLE) if v == "list"} & {(g, r) for g, r, v in grants(ROLE) if v == "watch"}
    expected = {(i.group, i.plural) for i in KINDS} | {("discovery.k8s.io", "endpointslices"), ("", "nodes")}
    assert read == expected


def test_writes_are_the_waypoint_objects_and_status_only():
    writes = {(g, r, v) for g, r, v in grants(ROLE) if v not in ("list", "watch")}
    objects = {(g, r, v) for g, r, v in writes if "/" not in r}
    status = {(g, r, v) for g, r, v in writes if "/" in r}
    assert objects == {(g, r, v) for g, r in (("", "serviceaccounts"), ("", "services"), ("apps", "deployments"))
                       for v in ("create", "patch", "delete")} | {("gateway.networking.k8s.io", "gatewayclasses",
                                                                   "create"),
                                                                  ("", "configmaps", "create"),  # istio-ca-root-cert
                                                                  ("", "configmaps", "patch"),
                                                                  ("authentication.k8s.io", "tokenreviews", "create")}
    assert status == {(g, f"{r}/status", v) for g, r in (
        ("gateway.networking.k8s.io", "gateways"), ("gateway.networking.k8s.io", "gatewayclasses"),
        ("gateway.networking.k8s.io", "httproutes"), ("", "services"), ("networking.istio.io", "serviceentries"),
        ("networking.istio.io", "envoyfilters"), ("security.istio.io", "authorizationpolicies"),
        ("security.istio.io", "requestauthentications"), ("security.istio.io", "peerauthentications"),
        ("extensions.istio.io", "wasmplugins"))
        for v in ("update", "patch")}


def test_secrets_only_the_ca_secret_in_istio_system():
    """istiod keeps its CA in istio-system/istio-ca-secret: read only that one, and create it."""
    rules = [r for r in ROLE["rules"] + NS_ROLE["rules"] if "secrets" in r["resources"]]
    assert rules == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["istio-ca-secret"]},
                     {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    assert all(r in NS_ROLE["rules"] for r in rules)


def test_leases_and_the_ca_secret_only_in_istio_system():
    assert NS_ROLE["metadata"]["namespace"] == "istio-system"
    assert grants(NS_ROLE) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")} | {
        ("", "secrets", v) for v in ("get", "create")}
    assert not any(r in ("leases", "secrets") for _, r, _ in grants(ROLE))


def test_node_agents_read_only_waypoints_beyond_what_the_node_authorizer_gives():
    role, binding = I.build_node_role()
    assert grants(role) == {("gateway.networking.k8s.io", r, v) for r in ("gateways", "gatewayclasses")
                            for v in ("list", "watch")}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "meshway-node"


def test_every_rule_says_why():
    for rule in I.CLUSTER_RULES + I.NAMESPACE_RULES + I.NODE_RULES:
        assert len(rule.why) > 10


def test_the_readme_shows_the_rules():
    assert I.write_rbac_table() in README.read_text()


# -- the shell against a fake API -----------------------------------------------------------------
class FakeApi:
    """Objects by path; a CRD becomes Established after `establish_after` reads; DELETE leaves an
    object for `linger` reads (a finalizer)."""

    host = "https://fake:6443"

    def __init__(self, establish_after: int = 1, linger: int = 1, existing: tuple[str, ...] | None = None,
                 fail: dict[str, ApiError] | None = None):
        self.objects: dict[str, dict] = {p: {} for p in (existing or ())}
        self.reads: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.establish_after, self.linger, self.fail = establish_after, linger, fail or {}

    def _check(self, verb: str, path: str) -> None:
        self.calls.append((verb, path))
        if path in self.fail:
            raise self.fail[path]

    def apply(self, path, body, field_manager, force=True):
        self._check("apply", path)
        assert field_manager == "meshway-install"
        self.objects[path] = dict(body)
        self.reads[path] = 0
        return body

    def get(self, path):
        self._check("get", path)
        if path not in self.objects:
            raise ApiError(404, "NotFound", "not found")
        self.reads[path] = self.reads.get(path, 0) + 1
        body = self.objects[path]
        if body.get("deleting") is not None:
            body["deleting"] -= 1
            if body["deleting"] < 0:
                del self.objects[path]
                raise ApiError(404, "NotFound", "not found")
        if body.get("kind") == I.CRD and self.reads[path] >= self.establish_after:
            return {**body, "status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                                      {"type": "Established", "status": "True"}]}}
        return {**body, "status": {"conditions": [{"type": "NamesAccepted", "status": "False",
                                                   "reason": "ListKindConflict", "message": "taken"}]}}

    def delete(self, path, uid=None, propagation=None):
        self._check("delete", path)
        if path not in self.objects:
            raise ApiError(404, "NotFound", "not found")
        self.objects[path]["deleting"] = self.linger
        return {}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def deleted_line(step: I.Step) -> str:
    return f'{step.qualified} "{step.name}" deleted' + (f" from {step.namespace} namespace" if step.namespace else "")


def installer(api: FakeApi, out: list[str]) -> I.Installer:
    clock = Clock()
    return I.Installer(api, out.append, clock=clock, sleep=clock.sleep)


def test_install_applies_in_order_and_waits_for_the_crds_before_the_class():
    api, out = FakeApi(establish_after=3), []
    installer(api, out).install(PLAN)
    assert out == [f"{s.ref} serverside-applied" for s in PLAN]
    applies = [p for v, p in api.calls if v == "apply"]
    assert applies == [s.path for s in PLAN]
    first_after_crds = api.calls.index(("apply", PLAN[len(CRDS)].path))
    reads_before = {p for v, p in api.calls[:first_after_crds] if v == "get"}
    namespace = next(s.path for s in PLAN if s.kind == "Namespace")  # read: did it exist before?
    assert reads_before == {s.path for s in PLAN if s.kind == I.CRD} | {namespace}
    assert all(api.reads[s.path] >= 3 for s in PLAN if s.kind == I.CRD)


def test_uninstall_deletes_istio_system_only_if_install_created_it():
    namespace = next(s for s in PLAN if s.kind == "Namespace")
    api, out = FakeApi(), []
    installer(api, out).install(PLAN)  # a new cluster: install creates istio-system and says so
    assert api.objects[namespace.path]["metadata"]["annotations"] == {I.CREATED_BY_INSTALL: "true"}
    installer(api, out).install(PLAN)  # a re-install keeps the mark
    assert api.objects[namespace.path]["metadata"]["annotations"] == {I.CREATED_BY_INSTALL: "true"}
    deleted = installer(api, out).uninstall(I.plan_uninstall(I.load_crd_documents()))
    assert namespace.path in {s.path for s in deleted}

    api, out = FakeApi(existing=(namespace.path,)), []  # istio-system was there before (e.g. Istio)
    installer(api, out).install(PLAN)
    assert "annotations" not in api.objects[namespace.path]["metadata"]
    deleted = installer(api, out).uninstall(I.plan_uninstall(I.load_crd_documents()))
    assert namespace.path not in {s.path for s in deleted}
    assert 'namespace "istio-system" kept: it existed before `meshway install`' in out
    assert namespace.path in api.objects


def test_a_crd_that_never_establishes_is_named():
    api, out = FakeApi(establish_after=10**9), []
    with pytest.raises(I.InstallError) as err:
        installer(api, out).install(PLAN)
    assert str(err.value) == (
        "timed out after 60s waiting for customresourcedefinition.apiextensions.k8s.io/"
        "backendtlspolicies.gateway.networking.k8s.io to be Established: NamesAccepted=False (ListKindConflict: "
        f"taken) (and {len(CRDS) - 1} more)")
    assert not any(p == PLAN[len(CRDS)].path for _, p in api.calls)  # nothing after the CRDs was applied


def test_an_api_refusal_names_the_object():
    path = BY_REF["clusterrole.rbac.authorization.k8s.io/meshway"].path
    api = FakeApi(fail={path: ApiError(403, "Forbidden", 'clusterroles.rbac.authorization.k8s.io "meshway" is '
                                                         "forbidden: user \"dev\" cannot patch")})
    with pytest.raises(I.InstallError) as err:
        installer(api, []).install(PLAN)
    assert str(err.value) == ('apply clusterrole.rbac.authorization.k8s.io/meshway: 403 Forbidden: '
                              'clusterroles.rbac.authorization.k8s.io "meshway" is forbidden: user "dev" cannot patch')


def test_uninstall_deletes_what_exists_newest_first_and_waits_until_gone():
    plan = I.plan_uninstall(DOCS)
    present = [s for s in plan if s.kind != "Namespace"]  # the namespace is already gone: not an error
    api, out = FakeApi(existing=tuple(s.path for s in present), linger=2), []
    deleted = installer(api, out).uninstall(plan)
    assert deleted == present
    assert out == [deleted_line(s) for s in present]
    assert 'serviceaccount "meshway" deleted from istio-system namespace' in out  # as kubectl 1.37 says it
    assert api.objects == {}
    assert [p for v, p in api.calls if v == "delete"] == [s.path for s in plan]


def test_uninstall_of_nothing_deletes_nothing():
    api, out = FakeApi(), []
    assert installer(api, out).uninstall(I.plan_uninstall(DOCS)) == [] and out == []


def test_a_deletion_that_never_finishes_is_named():
    plan = I.plan_uninstall(DOCS)
    api = FakeApi(existing=(plan[-1].path,), linger=10**9)
    with pytest.raises(I.InstallError, match="timed out after 120s waiting for customresourcedefinition.apiextensions"
                                             r".k8s.io/backendtlspolicies.gateway.networking.k8s.io to be deleted"):
        installer(api, []).uninstall(plan)


@pytest.mark.parametrize("text,expected", [
    ("HTTPSConnection(host='127.0.0.1', port=1): Failed to establish a new connection: [Errno 111] Connection refused",
     "[Errno 111] Connection refused"),
    ("<urllib3.connection.HTTPSConnection object at 0x7f>: Failed to establish a new connection: [Errno 113] No route",
     "[Errno 113] No route"),
    ("HTTPSConnection(host='x.invalid', port=6443): Failed to resolve 'x.invalid' ([Errno -2] Name or service not "
     "known)", "Failed to resolve 'x.invalid' ([Errno -2] Name or service not known)"),
])
def test_transport_errors_lose_urllib3s_wrapping(text, expected):
    class Wrapped(Exception):
        def __init__(self, reason):
            super().__init__("Max retries exceeded")
            self.reason = reason

    assert I.describe_transport_error(Wrapped(OSError(text))) == expected


# -- the command ----------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_meshway(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MESHWAY_DEBUG", "KUBECONFIG")}
    return subprocess.run([sys.executable, "-m", "meshway", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_an_unreachable_api_server_is_one_line_and_exit_1(tmp_path, command):
    port = closed_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    proc = run_meshway(command, "--kubeconfig", str(kubeconfig))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"error: cannot reach the Kubernetes API at https://127.0.0.1:{port}: [Errno 111] " \
                          "Connection refused\n"
    proc = run_meshway(command, "--kubeconfig", str(kubeconfig), "--context", "nope")
    assert proc.returncode == 1 and proc.stderr.startswith("error: kubeconfig: ") and proc.stderr.count("\n") == 1


def test_a_missing_kubeconfig_is_one_line(tmp_path):
    proc = run_meshway("install", "--kubeconfig", str(tmp_path / "none"))
    assert (proc.returncode, proc.stderr) == (1, f"error: kubeconfig {tmp_path / 'none'}: no such file\n")


def test_help_does_not_import_the_kubernetes_library():
    code = ("import sys; from click.testing import CliRunner; from meshway.cli.main import cli; "
            "r = CliRunner().invoke(cli, ['install', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3', 'yaml')"
            " or m == 'meshway.kube.install'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [m for m in json.loads(proc.stdout.replace("'", '"')) if not m.startswith("yaml")] == []


# -- the real API server ---------------------------------------------------------------------------
E2E_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "istioctl")


from kube_support import find_bin_dir  # noqa: E402


def require_binaries() -> Path:
    """The bin folder; when a binary is missing, a skip naming it, or a failure with
    MESHWAY_REQUIRE_E2E=1."""
    bin_dir = find_bin_dir()
    missing = [b for b in E2E_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        reason = (f"the Kubernetes binaries are not built ({', '.join(missing)} missing in {bin_dir}); "
                  "run scripts/build-kubernetes")
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(f"MESHWAY_REQUIRE_E2E=1: {reason}")
        pytest.skip(reason)
    return bin_dir


def tool(bin_dir: Path, name: str, kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(bin_dir / name), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def resource_versions(kubeconfig: Path) -> dict[str, tuple[str, int | None]]:
    """Each planned object's resourceVersion (and generation)."""
    from meshway.kube.client import KubeClient

    client = KubeClient.connect(str(kubeconfig))
    try:
        metas = {s.ref: client.get(s.path)["metadata"] for s in PLAN}
    finally:
        client.close()
    return {ref: (m["resourceVersion"], m.get("generation")) for ref, m in metas.items()}


def test_install_on_a_real_api_server():
    """install -> kubectl and istioctl see the CRDs and the class, the ServiceAccount gets exactly its
    rules -> install again changes nothing -> uninstall removes it all -> uninstall again is a no-op."""
    from meshway.kube.harness import Harness

    bin_dir = require_binaries()
    with Harness.create(bin_dir) as h:
        kc = h.kubeconfig
        before = tool(bin_dir, "istioctl", kc, "waypoint", "list", "-A", check=False)
        assert before.returncode != 0 and "could not find the requested resource" in before.stderr

        first = run_meshway("install", "--kubeconfig", str(kc))
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [f"{s.ref} serverside-applied" for s in PLAN]

        crds = set(tool(bin_dir, "kubectl", kc, "get", "crd", "-o", "name").stdout.split())
        assert crds == {f"customresourcedefinition.apiextensions.k8s.io/{n}" for n in CRDS}
        gc = json.loads(tool(bin_dir, "kubectl", kc, "get", "gatewayclass", L.WAYPOINT_CLASS, "-o", "json").stdout)
        assert gc["spec"] == {"controllerName": "istio.io/mesh-controller",
                              "description": "The default Istio waypoint GatewayClass"}
        assert tool(bin_dir, "istioctl", kc, "waypoint", "list", "-A").stdout.strip() == "No waypoints found."

        # Exactly the rules: what the control plane needs, nothing else.
        sa = "--as=system:serviceaccount:istio-system:meshway"
        for args, allowed in [
            (("list", "gateways.gateway.networking.k8s.io", "-A"), "yes"),
            (("watch", "endpointslices.discovery.k8s.io", "-A"), "yes"),
            (("patch", "deployments.apps", "-n", "bookinfo"), "yes"),
            (("update", "gateways.gateway.networking.k8s.io", "--subresource=status", "-n", "x"), "yes"),
            (("patch", "authorizationpolicies.security.istio.io", "--subresource=status", "-n", "x"), "yes"),
            (("create", "leases.coordination.k8s.io", "-n", "istio-system"), "yes"),
            (("create", "leases.coordination.k8s.io", "-n", "default"), "no"),
            (("get", "secrets/istio-ca-secret", "-n", "istio-system"), "yes"),
            (("get", "secrets", "-n", "default"), "no"),
            (("get", "secrets/other", "-n", "istio-system"), "no"),
            (("list", "secrets", "-A"), "no"),
            (("patch", "gateways.gateway.networking.k8s.io", "-n", "x"), "no"),
            (("delete", "gatewayclasses.gateway.networking.k8s.io"), "no"),
            (("delete", "pods", "-n", "x"), "no"),
            (("create", "customresourcedefinitions.apiextensions.k8s.io"), "no"),
        ]:
            got = tool(bin_dir, "kubectl", kc, "auth", "can-i", *args, sa, check=False).stdout.strip()
            assert got == allowed, (args, got)

        # The CRDs serve: istioctl applies a waypoint and lists it.
        tool(bin_dir, "istioctl", kc, "waypoint", "apply", "-n", "default")
        assert "waypoint" in tool(bin_dir, "istioctl", kc, "waypoint", "list", "-A").stdout

        # Again: the same lines, no spec changed. The first re-apply lets the API server persist its own
        # bookkeeping (the class's defaulted status, the policy's managedFields order); after that,
        # an install changes no object at all.
        rounds = [resource_versions(kc)]
        for _ in range(2):
            again = run_meshway("install", "--kubeconfig", str(kc))
            assert (again.returncode, again.stdout) == (0, first.stdout), again.stderr
            rounds.append(resource_versions(kc))
        assert {ref: g for ref, (_, g) in rounds[1].items()} == {ref: g for ref, (_, g) in rounds[0].items()}
        assert {ref for ref in rounds[2] if rounds[2][ref] != rounds[1][ref]} == set()

        gone = run_meshway("uninstall", "--kubeconfig", str(kc))
        assert gone.returncode == 0, gone.stderr
        assert gone.stdout.splitlines() == [deleted_line(s) for s in reversed(PLAN)]
        assert tool(bin_dir, "kubectl", kc, "get", "crd", "-o", "name").stdout == ""
        for kind, name in (("namespace", "istio-system"), ("clusterrole", "meshway"),
                           ("validatingadmissionpolicy", "safe-upgrades.gateway.networking.k8s.io")):
            missing = tool(bin_dir, "kubectl", kc, "get", kind, name, check=False)
            assert missing.returncode == 1 and "NotFound" in missing.stderr, (kind, missing.stderr)
        after = tool(bin_dir, "istioctl", kc, "waypoint", "list", "-A", check=False)
        assert after.returncode != 0 and "could not find the requested resource" in after.stderr

        twice = run_meshway("uninstall", "--kubeconfig", str(kc))
        assert (twice.returncode, twice.stdout) == (0, "Nothing to delete: meshway is not installed.\n"), twice.stderr
