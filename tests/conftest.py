"""Shared fixtures and helpers for meshway's tests.

Other test files import the helpers directly (`from conftest import apply, make_waypoint_ready`)
or use the fixtures of the same names.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from meshway import labels as L
from meshway.mesh.selection import Decision, decide_service, decide_workload
from meshway.mesh.status import WAYPOINT_BOUND
from meshway.mesh.view import SNAPSHOT_KINDS, MeshView
from meshway.model import find_kind, load_yaml
from meshway.store import Result, Store

Body = dict[str, Any]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path):
    s = Store(state_dir)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(name="apply")
def apply_fixture():
    return apply


@pytest.fixture(name="make_waypoint_ready")
def make_waypoint_ready_fixture():
    return make_waypoint_ready


# -- helpers -------------------------------------------------------------------------------------
def apply(store: Store, yaml_text: str) -> list[Result]:
    """`kubectl apply -f test.yaml`: parse every document, then apply them in one transaction."""
    return store.apply(load_yaml(yaml_text, "test.yaml"))


def waypoint_pods(store: Store, namespace: str, gateway: str) -> list[Body]:
    """The pods of a waypoint Gateway's Deployment (label gateway.networking.k8s.io/gateway-name)."""
    return [p for p in store.list(find_kind("pod"), namespace)
            if (p["metadata"].get("labels") or {}).get(L.GATEWAY_NAME) == gateway]


def set_pods_ready(store: Store, namespace: str, pods: list[Body], ready: bool = True) -> None:
    for pod in pods:
        store.write_status("Pod", namespace, pod["metadata"]["name"],
                           {"phase": "Running" if ready else "Pending",
                            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]})


def make_waypoint_ready(store: Store, namespace: str, gateway: str) -> None:
    """The kubelet's part: mark every pod of the waypoint's Deployment Ready, which gives the
    Deployment `readyReplicas > 0`, which is what makes the waypoint ready."""
    pods = waypoint_pods(store, namespace, gateway)
    assert pods, f"waypoint {namespace}/{gateway} has no pods"
    set_pods_ready(store, namespace, pods, True)
    deployment = store.get(find_kind("deployment"), namespace, pods[0]["metadata"]["ownerReferences"][0]["name"])
    assert deployment["status"].get("readyReplicas", 0) > 0, deployment["status"]


def make_waypoint_unready(store: Store, namespace: str, gateway: str) -> None:
    set_pods_ready(store, namespace, waypoint_pods(store, namespace, gateway), False)


def set_labels(store: Store, kind: str, namespace: str | None, name: str, labels: dict[str, str],
               remove: list[str] | None = None, overwrite: bool = False) -> list[Result]:
    """`kubectl label <kind> <name> k=v ... k-` (namespace is ignored for cluster-scoped kinds)."""
    return store.label(find_kind(kind), namespace, [name], None, dict(labels), list(remove or []), overwrite)


def build_view(store: Store) -> MeshView:
    return MeshView.build(store.snapshot(SNAPSHOT_KINDS)[1])


def decide(store: Store, kind: str, namespace: str, name: str) -> Decision:
    """The selection decision for a Service/ServiceEntry (addressed as a service) or a Pod (workload)."""
    view = build_view(store)
    if kind == "Pod":
        return decide_workload(view, view.pods[(namespace, name)])
    return decide_service(view, view.services[(kind, namespace, name)])


def conditions(body: Body) -> list[Body]:
    return list((body.get("status") or {}).get("conditions") or [])


def condition(body: Body, type_: str) -> Body | None:
    found = [c for c in conditions(body) if c.get("type") == type_]
    assert len(found) <= 1, f"condition {type_} appears {len(found)} times: {found}"
    return found[0] if found else None


def bound_condition(store: Store, kind: str, namespace: str, name: str) -> Body | None:
    """The istio.io/WaypointBound condition of a Service/ServiceEntry as stored, or None."""
    return condition(store.get(find_kind(kind), namespace, name), WAYPOINT_BOUND)


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes that import meshway from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("MESHWAY_STATE_DIR", None)
    return env


PYTHON = sys.executable


# -- the fault suite's table (tests/fault_table.py) ---------------------------------------------------
def pytest_configure(config) -> None:
    from fault_table import ENV

    if not hasattr(config, "workerinput"):  # the controlling process: workers inherit the path
        import tempfile
        fd, path = tempfile.mkstemp(prefix="meshway-faults-", suffix=".jsonl")
        os.close(fd)
        os.environ[ENV] = path


def pytest_terminal_summary(terminalreporter, config) -> None:
    from fault_table import ENV, render_fault_table

    path = os.environ.get(ENV)
    if hasattr(config, "workerinput") or not path:
        return
    table = render_fault_table(Path(path))
    if table:
        terminalreporter.write_sep("-", "fault suite")
        terminalreporter.write_line(table)
    Path(path).unlink(missing_ok=True)
