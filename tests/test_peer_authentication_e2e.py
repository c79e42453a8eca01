"""PeerAuthentication on the `meshway up` cluster (root, Linux; run in CI): a client pod outside the
mesh (its namespace is not enrolled, so it sends plaintext) and the mesh's own curl pod (HBONE
through its node proxy) call the details pod, by pod IP and through its Service.

- PERMISSIVE (no policy, and an explicit one): both are answered;
- namespace STRICT: the outside client's connections are refused by the destination's node proxy
  (no HTTP answer), its connection log names the policy, and the mesh client is still answered;
- a workload policy with `portLevelMtls` PERMISSIVE on the pod's port reopens that port only;
- the policy's `ZtunnelAccepted` status."""
from __future__ import annotations

import json
import time

import pytest

from cluster_support import Mesh, cluster_fixture
from meshway.model import find_kind, load_yaml

mesh = cluster_fixture()

OUTSIDE = """
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: curl-outside, namespace: outside, labels: {app: curl-outside}}
spec: {containers: [{name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}]}
"""
NS_STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""
NS_PERMISSIVE = NS_STRICT.replace("STRICT", "PERMISSIVE")
DETAILS_PORT_PERMISSIVE = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: details, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  portLevelMtls: {9080: {mode: PERMISSIVE}}
"""
STATIC_STRICT = "rbac_access_denied_matched_policy[ns[istio-system]-policy[istio_converted_static_strict]-rule[0]]"


@pytest.fixture(scope="module", name="outside")
def outside_fixture(mesh: Mesh):
    mesh.store.apply(load_yaml(OUTSIDE, "outside.yaml"))
    try:
        mesh.wait_ready()
        yield
    finally:
        mesh.store.delete([(find_kind("ns"), "", "outside")])


def answered(mesh: Mesh, target: str, client: str, client_ns: str = "default", count: int = 3) -> list[int]:
    return [r[0] for r in mesh.requests(target, count, "/details/0", client=client, client_ns=client_ns)]


def apply(mesh: Mesh, *docs: str) -> None:
    for doc in docs:
        mesh.store.apply(load_yaml(doc, "pa.yaml"))


def delete(mesh: Mesh, *names: str) -> None:
    mesh.store.delete([(find_kind("pa"), "default", n) for n in names], ignore_not_found=True)


def targets(mesh: Mesh) -> tuple[str, str]:
    return mesh.pod("details")["status"]["podIP"], "details.default"


def test_permissive_admits_plaintext_and_hbone(mesh: Mesh, outside) -> None:
    for policy in ((), (NS_PERMISSIVE,)):
        apply(mesh, *policy)
        try:
            time.sleep(1.5)  # an explicit PERMISSIVE changes nothing: nothing to wait for
            for target in targets(mesh):
                assert answered(mesh, target, "curl-outside", "outside") == [200] * 3, (policy, target)
                assert answered(mesh, target, "curl") == [200] * 3, (policy, target)
        finally:
            delete(mesh, "default")


def test_strict_refuses_plaintext_and_admits_hbone(mesh: Mesh, outside) -> None:
    ip, service = targets(mesh)
    apply(mesh, NS_STRICT)
    try:
        mesh.wait_until(lambda: answered(mesh, ip, "curl-outside", "outside", 1) == [0], 10,
                        "plaintext refused once STRICT")
        for target in (ip, service):
            assert answered(mesh, target, "curl-outside", "outside") == [0] * 3, target  # no HTTP answer
            assert answered(mesh, target, "curl") == [200] * 3, target  # HBONE from the mesh's curl
        body = mesh.store.get(find_kind("pa"), "default", "default")
        (cond,) = body["status"]["conditions"]
        assert (cond["type"], cond["status"], cond["reason"]) == ("ZtunnelAccepted", "True", "Accepted")
        lines = node_proxy_logs(mesh, mesh.pod("details")["spec"]["nodeName"])
        refused = [e for e in lines if e.get("dst.workload", "").startswith("details")
                   and e.get("error") == STATIC_STRICT]
        assert refused, lines[-5:]
        assert "src.identity" not in refused[-1]  # plaintext: no identity to log
    finally:
        delete(mesh, "default")
    mesh.wait_until(lambda: answered(mesh, ip, "curl-outside", "outside", 1) == [200], 10,
                    "plaintext admitted again once the policy is deleted")


def test_port_level_permissive_reopens_one_port(mesh: Mesh, outside) -> None:
    ip, service = targets(mesh)
    apply(mesh, NS_STRICT)
    try:
        mesh.wait_until(lambda: answered(mesh, ip, "curl-outside", "outside", 1) == [0], 10, "STRICT")
        # reviews (port 9080 too) stays STRICT: the exception is the details workload's
        reviews = mesh.pod("reviews-v1")["status"]["podIP"]
        apply(mesh, DETAILS_PORT_PERMISSIVE)
        mesh.wait_until(lambda: answered(mesh, ip, "curl-outside", "outside", 1) == [200], 10,
                        "details:9080 PERMISSIVE")
        for target in (ip, service):
            assert answered(mesh, target, "curl-outside", "outside") == [200] * 3, target
            assert answered(mesh, target, "curl") == [200] * 3, target
        refused = mesh.requests(reviews, 3, "/reviews/0", port=9080, client="curl-outside", client_ns="outside")
        assert [r[0] for r in refused] == [0] * 3
    finally:
        delete(mesh, "details", "default")


def node_proxy_logs(mesh: Mesh, node: str) -> list[dict]:
    """The node proxy's connection log lines (JSON) of `node`, from `meshway logs`."""
    from click.testing import CliRunner

    from meshway.cli import clustercmds  # noqa: F401  (registers `logs`)
    from meshway.cli.main import cli
    for _ in range(50):  # the line is written when the connection closes
        result = CliRunner().invoke(cli, ["--state-dir", str(mesh.state), "logs", f"ztunnel-{node}",
                                          "-n", "istio-system"])
        lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        if any(e.get("error", "").startswith("rbac_access_denied") for e in lines):
            return lines
        time.sleep(0.1)
    return lines
