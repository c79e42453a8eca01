"""What the CLI may claim is live. The store keeps the last state the control plane recorded (pods
Ready, Gateways Programmed, proxies SYNCED); once the control plane is stopped (`meshway down`) or
dead (a stale pid file), nothing keeps that true, so the readers turn every positive claim into
Unknown (kubectl does the same for pods on a node it lost) and say that the control plane is not
running. Negative claims stay: nothing can have made them true without a control plane.

On a Kubernetes API (`meshway --kubeconfig`), the control plane is live while one holds its Lease
(`KubeStore.controlplane_running`). Pure functions over store bodies; `find_controlplane` is the one
read of the pid file, `detect_running` picks the store's way."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

Body = dict[str, Any]

NOT_RUNNING = "the control plane is not running"
NOT_RUNNING_NOTE = (f"Note: {NOT_RUNNING} (`meshway up` starts it); readiness below is the last recorded state, "
                    "shown as Unknown where it claimed ready.")
REASON = "ControlPlaneNotRunning"
START_HINT = "`meshway up` starts it"


def find_controlplane(state_dir: Path) -> int | None:
    """The live control plane's pid, else None (no pid file, or its process is gone)."""
    from ..runtime.daemon import controlplane_pid

    return controlplane_pid(state_dir)


def detect_running(store: Any) -> bool:
    """A control plane serves this store: the embedded store's pid file, or a Kubernetes API's Lease."""
    if hasattr(store, "controlplane_running"):
        return store.controlplane_running()
    return find_controlplane(store.state_dir) is not None


def start_hint(store: Any) -> str:
    """How to start the control plane for this store: `meshway up starts it`, or on Kubernetes
    `meshway controlplane --kubeconfig FILE`."""
    return getattr(store, "start_hint", START_HINT)


def _unknown_condition(cond: Body) -> Body:
    return {**cond, "status": "Unknown", "reason": REASON,
            "message": f"{NOT_RUNNING}; last recorded: {cond.get('reason', '')}".rstrip("; ")}


def as_unknown(body: Body, condition: str) -> Body:
    """A copy whose `condition` (Ready, Programmed) is Unknown if it was True; a Running pod becomes
    phase Unknown, as kubectl shows pods of a lost node."""
    conds = (body.get("status") or {}).get("conditions") or []
    if not any(c.get("type") == condition and c.get("status") == "True" for c in conds) and \
            (body.get("status") or {}).get("phase") != "Running":
        return body
    out = copy.deepcopy(body)
    status = out["status"]
    status["conditions"] = [_unknown_condition(c) if c.get("type") == condition and c.get("status") == "True" else c
                            for c in conds]
    if status.get("phase") == "Running":
        status["phase"] = "Unknown"
    return out
