"""Shared by the xDS tests: build a store from YAML deterministically and translate a waypoint."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from meshway.ca import WORKLOAD_LIFETIME
from meshway.mesh.view import XDS_KINDS, MeshView
from meshway.model import find_kind, load_yaml
from meshway.runtime.controlplane import ControlPlane
from meshway.store import Store
from meshway.xds import protos as P
from meshway.xds.build_snapshot import WaypointConfig, build_waypoint_config
from meshway.xds.proxy import Proxy

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
BOOKINFO = ROOT / "meshway" / "demo" / "bookinfo.yaml"
TRAFFIC = ROOT / "meshway" / "demo" / "reviews-traffic.yaml"
ENVOY = str(ROOT / ".venv" / "bin" / "envoy")


def deterministic_suffix():
    counter = itertools.count(1)
    return lambda: f"p{next(counter):04d}"


def build_store(state: Path, files: list[Path]) -> Store:
    store = Store(state, random_suffix=deterministic_suffix())
    for f in files:
        store.apply(load_yaml(f.read_text(), str(f)))
    for pod in store.list(find_kind("pod"), None):
        labels = pod["metadata"].get("labels") or {}
        if "gateway.networking.k8s.io/gateway-name" not in labels:
            store.write_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"],
                               {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
    return store


def view_of(store: Store) -> MeshView:
    return MeshView.build(store.snapshot(XDS_KINDS)[1])


def translate(store: Store, namespace: str, waypoint: str = "waypoint", secrets: dict | None = None,
              ip: str = "127.0.0.2") -> WaypointConfig:
    proxy = Proxy(f"waypoint~{ip}~{waypoint}-0.{namespace}~{namespace}.svc.cluster.local", ip, namespace, waypoint,
                  waypoint)
    return build_waypoint_config(view_of(store), proxy, secrets)


def plain(config: WaypointConfig, with_secrets: bool = False) -> dict[str, Any]:
    """Type short name -> name -> resource dict, through the real protobuf types."""
    out = {}
    for type_url, items in config.messages().items():
        if type_url == P.SECRET and not with_secrets:
            continue
        out[type_url.rsplit(".", 1)[-1]] = {n: P.to_dict(m) for n, m in sorted(items.items())}
    return out


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, width=120)


@contextlib.contextmanager
def live_controlplane(state: Path, secret_ttl: timedelta = WORKLOAD_LIFETIME, stop_proxies: bool = True,
                      delta: bool = True):
    """A ControlPlane running in a thread (its own event loop) with real waypoint Envoys; on exit it
    stops and so do the Envoys it started (unless `stop_proxies` is false: a next one adopts them)."""
    cp = ControlPlane(state, envoy=ENVOY, secret_ttl=secret_ttl, delta=delta)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(cp.run(stop),), daemon=True)
    thread.start()
    try:
        yield cp
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        if stop_proxies:
            cp.stop_proxies()


def wait_programmed(store: Store, namespace: str, name: str = "waypoint", timeout: float = 30) -> bool:
    """Until the waypoint Gateway is Programmed (its replicas ACKed); False if not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gw = store.get(find_kind("gtw"), namespace, name)
        if any(c["type"] == "Programmed" and c["status"] == "True" for c in gw["status"].get("conditions", [])):
            return True
        time.sleep(0.1)
    return False
