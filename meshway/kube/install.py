"""`meshway install` / `meshway uninstall`: what a cluster needs before meshway's control plane can
run on it, as istiod's Helm charts would leave it, minus istiod.

Two rings. The plan is pure: `plan_install(documents)` turns the CRD manifests shipped in
`meshway/kube/crds/` (copied from the Go modules by scripts/update-crds, listed in VERSIONS) plus
the objects built here (the istio-system Namespace, the `istio-waypoint` GatewayClass, the
control plane's ServiceAccount and its least-privilege RBAC) into an ordered list of `Step`s, each
with its URL path and body; `plan_uninstall` is that list reversed. `install` and `uninstall` are the
thin shell: server-side apply (field manager `meshway-install`, force) of each step through
`KubeClient`, a bounded wait for every CRD to be Established before anything that needs one, and
DELETE in reverse order with a bounded wait until each object is gone (as `kubectl delete` waits).
"""
from __future__ import annotations

import dataclasses

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import labels as L
from ..model.registry import BY_KIND
from .client import ApiError, KubeClient, kind_path

Body = dict[str, Any]
FIELD_MANAGER = "meshway-install"
NAME = "meshway"                     # the ServiceAccount, ClusterRole, Role and both bindings
NAMESPACE = L.ROOT_NAMESPACE         # istio-system
CRD_DIR = Path(__file__).resolve().parent / "crds"
CRD = "CustomResourceDefinition"
PART_OF = {"app.kubernetes.io/part-of": "meshway"}
ESTABLISH_TIMEOUT = 60.0
DELETE_TIMEOUT = 120.0


# -- RBAC: the table the README shows ------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    resource_names: tuple[str, ...] = ()  # only these objects (RBAC cannot name the object of a create)

    def to_body(self) -> Body:
        body = {"apiGroups": list(self.api_groups), "resources": list(self.resources), "verbs": list(self.verbs)}
        return body | ({"resourceNames": list(self.resource_names)} if self.resource_names else {})


READ = ("list", "watch")
WRITE = ("create", "patch", "delete")
STATUS = ("update", "patch")
GW, NET, SEC, TEL = "gateway.networking.k8s.io", "networking.istio.io", "security.istio.io", "telemetry.istio.io"

# ClusterRole `meshway`: the control plane watches every namespace, as istiod does.
CLUSTER_RULES: tuple[Rule, ...] = (
    Rule(("",), ("namespaces", "services", "pods", "serviceaccounts"), READ,
         "selection's inputs: namespace and service labels (`istio.io/use-waypoint`, `istio.io/dataplane-mode`), "
         "pod addresses and identities, the waypoints' ServiceAccounts"),
    Rule(("",), ("configmaps",), READ, "the mesh config (`istio` in istio-system) and Gateway `parametersRef` "
                                       "overlays"),
    Rule(("",), ("configmaps",), ("create", "patch"), "the mesh root in every namespace (`istio-ca-root-cert`, "
                                                      "where proxies and node agents read it), as istiod publishes it"),
    Rule(("",), ("nodes",), READ, "where pods run: node addresses and locality"),
    Rule(("discovery.k8s.io",), ("endpointslices",), READ, "service endpoints (ready addresses per port)"),
    Rule(("apps",), ("deployments",), READ, "the waypoint Deployments it owns: readiness feeds the Gateway's "
                                            "`Programmed`"),
    Rule((GW,), ("gateways", "gatewayclasses", "httproutes"), READ, "waypoints, their class and their routes"),
    Rule((NET,), ("serviceentries", "virtualservices", "destinationrules", "envoyfilters"), READ,
         "Istio traffic configuration"),
    Rule((SEC,), ("authorizationpolicies", "requestauthentications", "peerauthentications"), READ,
         "waypoint and ztunnel policies, JWT rules for waypoints, mTLS modes for ztunnel"),
    Rule((TEL,), ("telemetries",), READ, "access logs, tracing and metrics settings"),
    Rule(("extensions.istio.io",), ("wasmplugins",), READ, "Wasm plugins for waypoints"),
    Rule(("",), ("serviceaccounts", "services"), WRITE,
         "a waypoint's ServiceAccount and Service (server-side apply; deleted with the Gateway)"),
    Rule(("apps",), ("deployments",), WRITE, "a waypoint's Deployment (server-side apply; deleted with the Gateway)"),
    Rule((GW,), ("gatewayclasses",), ("create",), "`istio-waypoint` again if someone deletes it (as istiod does)"),
    Rule((GW,), ("gateways/status", "gatewayclasses/status", "httproutes/status"), STATUS,
         "`Accepted`/`Programmed` and addresses on waypoints, `Accepted` on the class, route parents"),
    Rule(("",), ("services/status",), STATUS, "`istio.io/WaypointBound` on services"),
    Rule((NET,), ("serviceentries/status", "envoyfilters/status"), STATUS,
         "`istio.io/WaypointBound` on ServiceEntries; unsupported EnvoyFilter patches"),
    Rule((SEC,), ("authorizationpolicies/status", "requestauthentications/status", "peerauthentications/status"),
         STATUS,
         "`WaypointAccepted` / `ZtunnelAccepted` on policies"),
    Rule(("extensions.istio.io",), ("wasmplugins/status",), STATUS,
         "`WaypointAccepted` and module problems on Wasm plugins"),
    Rule(("authentication.k8s.io",), ("tokenreviews",), ("create",),
         "the CA API on the xDS port: a caller's service-account token (audience `istio-ca`) is checked by the "
         "API server before its CSR is signed, as istiod's `system:auth-delegator` binding allows"),
)
# Role `meshway` in istio-system only (as istiod's own Role): leases live in the system namespace.
NAMESPACE_RULES: tuple[Rule, ...] = (
    Rule(("coordination.k8s.io",), ("leases",), ("get", "create", "update"),
         "leader election (one replica writes status and waypoint objects)"),
    Rule(("",), ("secrets",), ("get",), "the mesh CA (`istio-ca-secret`): every replica signs with the same root, "
                                        "kept across restarts and hosts", ("istio-ca-secret",)),
    Rule(("",), ("secrets",), ("create",), "the mesh CA's Secret, made by the first replica (a create cannot be "
                                           "limited to one name)"),
)

# ClusterRole `meshway-node`, bound to the group `system:nodes` (every node agent, `system:node:<name>`;
# the Node authorizer gives them their pods, Services and EndpointSlices, not Gateway API objects).
NODE_ROLE, NODES_GROUP = f"{NAME}-node", "system:nodes"
NODE_RULES: tuple[Rule, ...] = (
    Rule((GW,), ("gateways", "gatewayclasses"), READ,
         "guaranteed traversal on the node's pods outside the mesh: which waypoint serves a required service, "
         "so that only its pods reach them"),
)


def write_rbac_table(cluster_rules: Iterable[Rule] = CLUSTER_RULES,
                     namespace_rules: Iterable[Rule] = NAMESPACE_RULES,
                     node_rules: Iterable[Rule] = NODE_RULES) -> str:
    """The README's Markdown table of every rule, with its reason."""
    lines = ["| role | apiGroups | resources | verbs | why |", "|---|---|---|---|---|"]
    for role, rules in ((f"ClusterRole `{NAME}`", cluster_rules), (f"Role `{NAMESPACE}/{NAME}`", namespace_rules),
                        (f"ClusterRole `{NODE_ROLE}` (group `{NODES_GROUP}`)", node_rules)):
        for r in rules:
            groups = ", ".join(f'`{g}`' if g else '`""`' for g in r.api_groups)
            names = f" (`{'`, `'.join(r.resource_names)}` only)" if r.resource_names else ""
            lines.append(f"| {role} | {groups} | {', '.join(r.resources)}{names} | {', '.join(r.verbs)} | {r.why} |")
    return "\n".join(lines) + "\n"


# -- the objects meshway adds to the upstream CRDs ------------------------------------------------
CREATED_BY_INSTALL = "meshway.io/created-by-install"


def mark_created(step: "Step") -> "Step":
    """The Namespace step with the annotation saying install created it (kept by later installs)."""
    body = {**step.body, "metadata": {**step.body["metadata"],
                                      "annotations": {CREATED_BY_INSTALL: "true"}}}
    return dataclasses.replace(step, body=body)


def build_namespace() -> Body:
    # The label gives the apply a field to own: an apply that owns nothing leaves no managedFields,
    # and the next one would then add the API server's `before-first-apply` entry (a change).
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": dict(PART_OF)}}


def build_gateway_class() -> Body:
    """`istio-waypoint` as istiod creates it when missing (`gatewaycommon/gatewayclass.go`)."""
    return {"apiVersion": f"{GW}/v1", "kind": "GatewayClass", "metadata": {"name": L.WAYPOINT_CLASS},
            "spec": {"controllerName": L.MESH_CONTROLLER, "description": "The default Istio waypoint GatewayClass"}}


def build_service_account() -> Body:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": dict(PART_OF)}}


def build_role(kind: str, rules: Iterable[Rule]) -> Body:
    meta: Body = {"name": NAME, "labels": dict(PART_OF)}
    if kind == "Role":
        meta["namespace"] = NAMESPACE
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "rules": [r.to_body() for r in rules]}


def build_binding(kind: str) -> Body:
    """ClusterRoleBinding or RoleBinding of the role of the same scope to the ServiceAccount."""
    role = "ClusterRole" if kind == "ClusterRoleBinding" else "Role"
    meta: Body = {"name": NAME, "labels": dict(PART_OF)}
    if kind == "RoleBinding":
        meta["namespace"] = NAMESPACE
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]}


ZTUNNEL = "ztunnel"
ZTUNNEL_IMAGE = "meshway/ztunnel"


def build_ztunnel_objects() -> list[Body]:
    """The node proxies as Istio's ambient profile installs them: ServiceAccount and DaemonSet
    `ztunnel` in istio-system (one pod per node; `meshway node` runs it as Envoy in the node's
    network namespace, `meshway.node.nodeproxy`). Its token volume's audience is the CA's, as in
    Istio's chart, so a node may request the pod's token for it."""
    labels = {"app": ZTUNNEL, **PART_OF}
    template_labels = {"app": ZTUNNEL, "sidecar.istio.io/inject": "false", L.DATAPLANE_MODE: L.NONE}
    container = {"name": "istio-proxy", "image": ZTUNNEL_IMAGE,
                 "env": [{"name": "CA_ADDRESS", "value": "istiod.istio-system.svc:15012"},
                         {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                 "ports": [{"name": "ztunnel-stats", "containerPort": 15020, "protocol": "TCP"}],
                 "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 2},
                 # as Istio's chart: root (its capture needs NET_ADMIN in the node's namespace), group 1337
                 "securityContext": {"runAsUser": 0, "runAsGroup": 1337, "privileged": False,
                                     "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]}},
                 "volumeMounts": [{"name": "istio-token", "mountPath": "/var/run/secrets/tokens"}]}
    token = {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}
    daemonset = {"apiVersion": "apps/v1", "kind": "DaemonSet",
                 "metadata": {"name": ZTUNNEL, "namespace": NAMESPACE, "labels": labels},
                 "spec": {"selector": {"matchLabels": {"app": ZTUNNEL}},
                          "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1,
                                                                                        "maxUnavailable": 0}},
                          "template": {"metadata": {"labels": template_labels},
                                       "spec": {"serviceAccountName": ZTUNNEL, "hostNetwork": True,
                                                "priorityClassName": "system-node-critical",
                                                "terminationGracePeriodSeconds": 30,
                                                "tolerations": [{"operator": "Exists"}],
                                                "containers": [container],
                                                "volumes": [{"name": "istio-token", "projected": {"sources": [token]}}]}}}}
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": ZTUNNEL, "namespace": NAMESPACE, "labels": labels}}
    return [account, daemonset]


def build_node_role() -> list[Body]:
    """ClusterRole `meshway-node` and its binding to every node agent (group `system:nodes`)."""
    meta = {"name": NODE_ROLE, "labels": dict(PART_OF)}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
            "rules": [r.to_body() for r in NODE_RULES]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": dict(meta),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_ROLE},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": NODES_GROUP}]}
    return [role, binding]


ISTIOD = "istiod"
ISTIOD_IMAGE = "meshway/pilot"


def build_istiod_deployment() -> Body:
    """Deployment `istiod` in istio-system, named and labelled as Istio's chart does (`app=istiod`,
    `istio=pilot`, `istio.io/rev=default`): the pod `istioctl proxy-status` and the other xDS
    commands find without `--xds-address` and port-forward to on 15012, and `istioctl version` on
    15014 (its `prometheus.io/port`, as Istio's chart annotates it). The control plane runs
    outside the cluster; the node agent makes this pod's container a relay to its xDS port
    (`meshway.node.istiod`). Run as Istio runs istiod: uid and gid 1337, never root."""
    labels = {"app": ISTIOD, "istio": "pilot", L.REVISION: "default"}
    container = {"name": "discovery", "image": ISTIOD_IMAGE,
                 "ports": [{"name": "grpc-xds", "containerPort": 15012, "protocol": "TCP"},
                           {"name": "http-monitoring", "containerPort": 15014, "protocol": "TCP"}],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True,
                                     "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": ISTIOD, "namespace": NAMESPACE, "labels": {**labels, **PART_OF}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": ISTIOD, "istio": "pilot"}},
                     "template": {"metadata": {"labels": {**labels, "sidecar.istio.io/inject": "false",
                                                          L.DATAPLANE_MODE: L.NONE},
                                               "annotations": {"prometheus.io/port": "15014",
                                                               "prometheus.io/scrape": "true"}},
                                  "spec": {"serviceAccountName": NAME, "automountServiceAccountToken": False,
                                           "containers": [container]}}}}


def build_meshway_objects() -> list[Body]:
    return [build_namespace(), build_gateway_class(), build_service_account(),
            build_role("ClusterRole", CLUSTER_RULES), build_binding("ClusterRoleBinding"),
            build_role("Role", NAMESPACE_RULES), build_binding("RoleBinding"), *build_node_role(),
            *build_ztunnel_objects(), build_istiod_deployment()]


# -- the plan -------------------------------------------------------------------------------------
# Kinds outside meshway's registry: (group, version) -> {kind: (plural, namespaced)}.
OTHER_KINDS: dict[tuple[str, str], dict[str, tuple[str, bool]]] = {
    ("apiextensions.k8s.io", "v1"): {CRD: ("customresourcedefinitions", False)},
    ("admissionregistration.k8s.io", "v1"): {"ValidatingAdmissionPolicy": ("validatingadmissionpolicies", False),
                                             "ValidatingAdmissionPolicyBinding":
                                                 ("validatingadmissionpolicybindings", False)},
    ("apps", "v1"): {"DaemonSet": ("daemonsets", True)},
    ("rbac.authorization.k8s.io", "v1"): {"ClusterRole": ("clusterroles", False),
                                          "ClusterRoleBinding": ("clusterrolebindings", False),
                                          "Role": ("roles", True), "RoleBinding": ("rolebindings", True)},
}


@dataclass(frozen=True)
class Step:
    """One object: kubectl's name for its kind (`customresourcedefinition.apiextensions.k8s.io`), its
    name and namespace, its URL path, and the body to apply."""

    qualified: str
    name: str
    namespace: str | None
    path: str
    body: Body

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def ref(self) -> str:
        return f"{self.qualified}/{self.name}"


def plan_step(body: Body) -> Step:
    """The path and kubectl name of one manifest; ValueError for a kind this plan cannot address."""
    api_version, kind = body.get("apiVersion") or "", body.get("kind") or ""
    meta = body.get("metadata") or {}
    name, namespace = meta.get("name") or "", meta.get("namespace")
    group, _, version = api_version.rpartition("/")
    info = BY_KIND.get(kind)
    if info is not None and api_version in info.api_versions():
        return Step(info.qualified, name, namespace if info.namespaced else None,
                    kind_path(kind, namespace, name), body)
    plural, namespaced = OTHER_KINDS.get((group, version), {}).get(kind, (None, False))
    if plural is None or not name:
        raise ValueError(f"cannot install {kind or '?'} {name or '?'} ({api_version or 'no apiVersion'})")
    base = f"/apis/{group}/{version}" + (f"/namespaces/{namespace}" if namespaced else "")
    return Step(f"{kind.lower()}.{group}", name, namespace if namespaced else None, f"{base}/{plural}/{name}",
                body)


def plan_install(documents: Iterable[Body]) -> list[Step]:
    """Everything `meshway install` applies, in order: the CRDs (upstream's order), the other
    upstream manifests (Gateway API's admission policy), then meshway's own objects."""
    docs = list(documents)
    ordered = [d for d in docs if d.get("kind") == CRD] + [d for d in docs if d.get("kind") != CRD]
    return [plan_step(d) for d in ordered + build_meshway_objects()]


def plan_uninstall(documents: Iterable[Body]) -> list[Step]:
    """What `meshway uninstall` deletes: what install applies, newest first."""
    return list(reversed(plan_install(documents)))


# -- the package data -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CrdFile:
    module: str        # sigs.k8s.io/gateway-api@v1.6.3
    source: str        # the path inside the module
    file: str          # the file in meshway/kube/crds
    sha256: str


def read_versions(text: str) -> list[CrdFile]:
    """VERSIONS: `module@version path-in-module file sha256` per line, # comments."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or not re.fullmatch(r"[0-9a-f]{64}", fields[3]):
            raise ValueError(f"VERSIONS line {n}: expected 'module@version path file sha256', got {line!r}")
        out.append(CrdFile(*fields))
    return out


def load_crd_documents(crd_dir: Path = CRD_DIR) -> list[Body]:
    """Every document of the shipped manifests, in VERSIONS order."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs: list[Body] = []
    for entry in read_versions((crd_dir / "VERSIONS").read_text()):
        with open(crd_dir / entry.file, "rb") as f:
            docs += [d for d in yaml.load_all(f, Loader=loader) if d]
    return docs


# -- decisions on what the API answered -----------------------------------------------------------
def detect_established(crd: Body) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or ())


def describe_conditions(crd: Body) -> str:
    """`NamesAccepted=False (ListKindConflict: ...)`: why a CRD is not Established yet."""
    conds = (crd.get("status") or {}).get("conditions") or []
    parts = [f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason')}: {c.get('message')})"
                                                      if c.get("status") != "True" and c.get("reason") else "")
             for c in conds]
    return ", ".join(parts) or "no conditions yet"


def describe_transport_error(exc: BaseException) -> str:
    """The cause of a failed connection, without urllib3's wrapping: `[Errno 111] Connection refused`."""
    while getattr(exc, "reason", None) is not None and isinstance(exc.reason, BaseException):
        exc = exc.reason
    text = re.sub(r"^(<[^>]*>|\w+Connection\([^)]*\)): ", "", str(exc))  # urllib3's "HTTPSConnection(host=...): "
    return text.removeprefix("Failed to establish a new connection: ")


# -- the shell ------------------------------------------------------------------------------------
class InstallError(Exception):
    """One line for the user (the CLI prints `error: ` and exits 1)."""


Echo = Callable[[str], None]


@dataclass
class Installer:
    client: KubeClient
    echo: Echo
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    establish_timeout: float = ESTABLISH_TIMEOUT
    delete_timeout: float = DELETE_TIMEOUT

    def _namespace_created_here(self, step: Step) -> bool:
        """Whether install made (or makes now) this Namespace: it did not exist before, or an earlier
        install marked it so. Only such a namespace is deleted by uninstall."""
        live = self.call(step, "read", lambda: self.client.get(step.path), missing_ok=True)
        return live is None or CREATED_BY_INSTALL in ((live.get("metadata") or {}).get("annotations") or {})

    def install(self, plan: list[Step]) -> None:
        pending: list[Step] = []
        plan = [mark_created(s) if s.kind == "Namespace" and self._namespace_created_here(s) else s for s in plan]
        for step in plan:
            if step.kind != CRD and pending:
                self.wait_established(pending)
                pending = []
            self.call(step, "apply", lambda: self.client.apply(step.path, step.body, FIELD_MANAGER))
            self.echo(f"{step.ref} serverside-applied")
            if step.kind == CRD:
                pending.append(step)
        if pending:
            self.wait_established(pending)

    def wait_established(self, crds: list[Step]) -> None:
        deadline = self.clock() + self.establish_timeout
        waiting = list(crds)
        while waiting:
            last = {s.name: self.call(s, "read", lambda s=s: self.client.get(s.path)) for s in waiting}
            waiting = [s for s in waiting if not detect_established(last[s.name])]
            if not waiting:
                return
            if self.clock() >= deadline:
                s = waiting[0]
                more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
                raise InstallError(f"timed out after {self.establish_timeout:g}s waiting for {s.ref} to be "
                                   f"Established: {describe_conditions(last[s.name])}{more}")
            self.sleep(0.2)

    def uninstall(self, plan: list[Step]) -> list[Step]:
        deleted = []
        for step in plan:
            if step.kind == "Namespace":
                live = self.call(step, "read", lambda: self.client.get(step.path), missing_ok=True)
                if live is not None and CREATED_BY_INSTALL not in ((live.get("metadata") or {}).get("annotations") or {}):
                    self.echo(f'namespace "{step.name}" kept: it existed before `meshway install`')
                    continue
            if self.call(step, "delete", lambda: self.client.delete(step.path, propagation="Background"),
                         missing_ok=True) is None:
                continue
            deleted.append(step)
            self.echo(f'{step.qualified} "{step.name}" deleted' + (f" from {step.namespace} namespace"
                                                                    if step.namespace else ""))
        for step in deleted:
            self.wait_deleted(step)
        return deleted

    def wait_deleted(self, step: Step) -> None:
        deadline = self.clock() + self.delete_timeout
        while self.call(step, "read", lambda: self.client.get(step.path), missing_ok=True) is not None:
            if self.clock() >= deadline:
                raise InstallError(f"timed out after {self.delete_timeout:g}s waiting for {step.ref} to be "
                                   "deleted (finalizers still running?)")
            self.sleep(0.2)

    def call(self, step: Step, verb: str, fn: Callable[[], Body], missing_ok: bool = False) -> Body | None:
        """`fn()`; a 404 is None when `missing_ok`; every other failure an InstallError naming the object."""
        try:
            return fn()
        except ApiError as exc:
            if missing_ok and exc.not_found:
                return None
            if exc.status == 0:  # the client got no HTTP answer (e.g. a TLS failure)
                raise InstallError(f"cannot reach the Kubernetes API at {self.client.host}: {exc.reason or 'no answer'}"
                                   f"{': ' + exc.message if exc.message else ''}") from None
            raise InstallError(f"{verb} {step.ref}: {exc.status} {exc.reason}: {exc.message}".rstrip(": ")) from None
        except Exception as exc:
            if not detect_transport_error(exc):
                raise
            raise InstallError(f"cannot reach the Kubernetes API at {self.client.host}: "
                               f"{describe_transport_error(exc)}") from None


def detect_transport_error(exc: BaseException) -> bool:
    import urllib3

    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def connect(kubeconfig: str | None, context: str | None) -> KubeClient:
    """A KubeClient, or InstallError with the reason (no kubeconfig, unknown context, ...)."""
    try:
        return KubeClient.connect(kubeconfig, context)
    except FileNotFoundError as exc:
        raise InstallError(str(exc)) from None
    except Exception as exc:  # the kubernetes library's ConfigException: an unusable kubeconfig or context
        if type(exc).__name__ != "ConfigException":
            raise
        raise InstallError(f"kubeconfig: {exc}") from None


def install(kubeconfig: str | None, context: str | None, echo: Echo) -> None:
    client = connect(kubeconfig, context)
    try:
        Installer(client, echo).install(plan_install(load_crd_documents()))
    finally:
        client.close()


def uninstall(kubeconfig: str | None, context: str | None, echo: Echo) -> list[Step]:
    client = connect(kubeconfig, context)
    try:
        return Installer(client, echo).uninstall(plan_uninstall(load_crd_documents()))
    finally:
        client.close()
