"""PeerAuthentication for node proxies (ztunnel), resolved as istiod resolves it for an ambient
workload (`pilot/pkg/serviceregistry/kube/controller/ambient/policies.go`). Pure.

- One policy per level applies: the mesh's (root namespace, no selector), the namespace's (no
  selector) and the workload's (a selector matching the pod's labels); at each level the oldest
  (creationTimestamp, then name) wins. Root-namespace policies with a selector are ignored.
- The mode is inherited mesh -> namespace -> workload; `UNSET` (or no `mtls`) inherits, no policy at
  all is PERMISSIVE. ztunnel has two modes only: `STRICT` refuses plaintext (connections that do not
  come through HBONE), anything else accepts both. `DISABLE` is PERMISSIVE: HBONE between mesh
  workloads is always mutual TLS (Istio's docs: "DISABLE mode is not supported" in ambient).
- The workload policy's `portLevelMtls` overrides the mode on the pod's own (target) port.
- What istiod sends ztunnel for it: nothing (PERMISSIVE), the static policy
  `istio-system/istio_converted_static_strict` (STRICT on every port), or, with port exceptions,
  `NS/converted_peer_authentication_NAME` (a DENY of unauthenticated connections on some ports).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from .. import labels as L
from ..model.istio import PeerAuthentication

STRICT, PERMISSIVE, UNSET, DISABLE = "STRICT", "PERMISSIVE", "UNSET", "DISABLE"
STATIC_STRICT = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"
DISABLE_NOTE = "DISABLE is PERMISSIVE on ztunnel: plaintext is accepted, HBONE between mesh workloads stays mTLS"


@dataclass(frozen=True)
class Applied:
    """One policy that took part in the decision."""
    level: str  # mesh | namespace | workload
    namespace: str
    name: str
    mode: str  # as written: UNSET, DISABLE, PERMISSIVE, STRICT

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class MtlsDecision:
    """The mTLS a node proxy requires of connections to one workload."""
    mode: str = PERMISSIVE  # STRICT or PERMISSIVE: every port without an exception
    ports: tuple[tuple[int, str], ...] = ()  # (target port, mode) where it differs from `mode`
    applied: tuple[Applied, ...] = ()  # mesh, namespace, workload policies found (oldest of each level)
    notes: tuple[str, ...] = ()

    def mode_of(self, port: int) -> str:
        return dict(self.ports).get(port, self.mode)

    @property
    def refuses_plaintext(self) -> bool:
        """Whether some port refuses connections that do not come over HBONE."""
        return self.mode == STRICT or any(m == STRICT for _, m in self.ports)

    @property
    def policy(self) -> str | None:
        """The ztunnel authorization istiod converts this into (`NS/NAME`), if any."""
        if not self.refuses_plaintext:
            return None
        if not self.ports:
            return f"{L.ROOT_NAMESPACE}/{STATIC_STRICT}"
        workload = next(a for a in self.applied if a.level == "workload")
        return f"{workload.namespace}/{CONVERTED_PREFIX}{workload.name}"


def _oldest(policies: list[PeerAuthentication]) -> PeerAuthentication | None:
    return min(policies, key=lambda p: (p.metadata.creationTimestamp or "", p.name), default=None)


def _selector(p: PeerAuthentication) -> Mapping[str, str]:
    return p.spec.selector.matchLabels if p.spec.selector else {}


def find_level_policies(policies: Iterable[PeerAuthentication], namespace: str, labels: Mapping[str, str],
                        root: str = L.ROOT_NAMESPACE) -> list[tuple[str, PeerAuthentication]]:
    """[(level, policy)] of the mesh, namespace and workload policies that apply to a pod."""
    mesh, ns, workload = [], [], []
    for p in policies:
        selector = _selector(p)
        if not selector:
            if p.namespace == root:
                mesh.append(p)
            elif p.namespace == namespace:
                ns.append(p)
        elif p.namespace == namespace and namespace != root and all(labels.get(k) == v for k, v in selector.items()):
            workload.append(p)
    found = [(level, _oldest(ps)) for level, ps in (("mesh", mesh), ("namespace", ns), ("workload", workload))]
    return [(level, p) for level, p in found if p is not None]


def find_overriding_policy(policy: PeerAuthentication, policies: Iterable[PeerAuthentication]
                           ) -> PeerAuthentication | None:
    """The older policy that applies instead of `policy` to everything `policy` selects: a mesh or
    namespace policy of the same namespace, or a workload policy with the same selector."""
    same = [p for p in policies if p.namespace == policy.namespace and dict(_selector(p)) == dict(_selector(policy))]
    oldest = _oldest([*same, policy])
    return oldest if oldest is not None and oldest.name != policy.name else None


def _ztunnel_mode(mode: str) -> str:
    return STRICT if mode == STRICT else PERMISSIVE


def decide_peer_authentication(policies: Iterable[PeerAuthentication], namespace: str, labels: Mapping[str, str],
                               root: str = L.ROOT_NAMESPACE) -> MtlsDecision:
    """The effective mTLS mode for a pod of `namespace` with `labels`, and its port exceptions."""
    mode, applied, notes, ports = PERMISSIVE, [], [], ()
    for level, p in find_level_policies(policies, namespace, labels, root):
        applied.append(Applied(level, p.namespace, p.name, p.spec.mode))
        if p.spec.mode != UNSET:
            mode = _ztunnel_mode(p.spec.mode)
        if DISABLE in (p.spec.mode, *(m.mode for m in (p.spec.portLevelMtls or {}).values())):
            notes.append(f"{p.namespace}/{p.name}: {DISABLE_NOTE}")
        if level == "workload":
            ports = tuple((port, _ztunnel_mode(m.mode)) for port, m in sorted((p.spec.portLevelMtls or {}).items())
                          if m.mode != UNSET and _ztunnel_mode(m.mode) != mode)
    return MtlsDecision(mode, ports, tuple(applied), tuple(notes))


def describe(decision: MtlsDecision) -> str:
    """One line: `STRICT (namespace foo/default; port 9090 PERMISSIVE by workload foo/x)`."""
    parts = [f"{a.level} {a.key}" + (" UNSET: inherited" if a.mode == UNSET else "") for a in decision.applied]
    parts += [f"port {port} {mode}" for port, mode in decision.ports]
    return f"{decision.mode} ({'; '.join(parts) or 'no PeerAuthentication: the default'})"
