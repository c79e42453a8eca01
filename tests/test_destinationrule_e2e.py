"""DestinationRule changes on a running waypoint take effect (issue 9 item 3), with real Envoy.

Envoy puts a cluster that a CDS update adds or modifies in warming until it receives the cluster's
ClusterLoadAssignment again; the ADS stream must re-send unchanged endpoints (`meshway.xds.stream`).
Every DestinationRule field the translator supports is applied, changed and deleted live; after each
step the waypoint's `/config_dump` must show the cluster active (none warming) with the new setting
within 1 s, and every xDS type SYNCED. Both ADS modes (Delta, the default, and SotW)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from fault_table import record_fault
from xds_support import live_controlplane, wait_programmed

from meshway.model import find_kind, load_yaml
from meshway.runtime.controlplane import ControlPlane
from meshway.runtime.envoy_admin import AdminError, fetch_admin
from meshway.store import Store
from meshway.xds.cache import SYNCED

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
spec: {containers: [{name: reviews, image: reviews}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
spec: {containers: [{name: reviews, image: reviews}]}
"""

HOST = "reviews.default.svc.cluster.local"
MAIN = f"inbound-vip|9080|http|{HOST}"
V1, V2 = f"inbound-vip|9080|http/v1|{HOST}", f"inbound-vip|9080|http/v2|{HOST}"
DR = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\n"

Clusters = dict[str, dict[str, Any]]  # active clusters by name; under ROUTES the route configs by name
ROUTES = "(route configs)"


def _thresholds(c: dict) -> dict:
    return c.get("circuit_breakers", {}).get("thresholds", [{}])[0]


def _http_options(c: dict) -> dict:
    return c.get("typed_extension_protocol_options", {}).get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})


def _route(cs: Clusters) -> dict:
    """The route action of the service's default route, as the route config (RDS) dump shows it."""
    return cs[ROUTES][MAIN]["virtual_hosts"][0]["routes"][0]["route"]


def _lb(c: dict) -> str:
    return c.get("lb_policy", "ROUND_ROBIN")  # the proto default is left out of the dump


# (step, DestinationRule spec or None to delete it, what the clusters must show)
STEPS: list[tuple[str, str | None, Callable[[Clusters], bool]]] = [
    ("loadBalancer.simple ROUND_ROBIN", "spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}",
     lambda cs: _lb(cs[MAIN]) == "ROUND_ROBIN"),
    ("loadBalancer.simple RANDOM", "spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}",
     lambda cs: _lb(cs[MAIN]) == "RANDOM"),
    ("loadBalancer.simple LEAST_CONN", "spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}}",
     lambda cs: _lb(cs[MAIN]) == "LEAST_REQUEST"),
    ("loadBalancer.consistentHash", "spec: {host: reviews, trafficPolicy: {loadBalancer: "
                                    "{consistentHash: {httpHeaderName: x-user, minimumRingSize: 2048}}}}",
     lambda cs: _lb(cs[MAIN]) == "RING_HASH" and cs[MAIN]["ring_hash_lb_config"]["minimum_ring_size"] == "2048"
     and _route(cs).get("hash_policy") == [{"header": {"header_name": "x-user"}}]),
    ("loadBalancer.consistentHash maglev", "spec: {host: reviews, trafficPolicy: {loadBalancer: "
                                           "{consistentHash: {httpCookie: {name: s, ttl: 10s}, maglev: {}}}}}",
     lambda cs: _lb(cs[MAIN]) == "MAGLEV" and _route(cs).get("hash_policy") == [{"cookie": {"name": "s",
                                                                                           "ttl": "10s"}}]),
    ("connectionPool.tcp", "spec: {host: reviews, trafficPolicy: {connectionPool: "
                           "{tcp: {maxConnections: 7, connectTimeout: 3s}}}}",
     lambda cs: _thresholds(cs[MAIN]).get("max_connections") == 7 and cs[MAIN]["connect_timeout"] == "3s"),
    ("connectionPool.tcp changed", "spec: {host: reviews, trafficPolicy: {connectionPool: "
                                   "{tcp: {maxConnections: 8, connectTimeout: 2s}}}}",
     lambda cs: _thresholds(cs[MAIN]).get("max_connections") == 8 and cs[MAIN]["connect_timeout"] == "2s"),
    ("connectionPool.http", "spec: {host: reviews, trafficPolicy: {connectionPool: {http: {"
                            "http1MaxPendingRequests: 11, http2MaxRequests: 12, maxRetries: 4, idleTimeout: 30s, "
                            "maxRequestsPerConnection: 5}}}}",
     lambda cs: _thresholds(cs[MAIN]).get("max_pending_requests") == 11
     and _thresholds(cs[MAIN]).get("max_requests") == 12 and _thresholds(cs[MAIN]).get("max_retries") == 4
     and _http_options(cs[MAIN]).get("common_http_protocol_options") == {
         "idle_timeout": "30s", "max_requests_per_connection": 5}),
    ("connectionPool.http h2UpgradePolicy UPGRADE", "spec: {host: reviews, trafficPolicy: {connectionPool: {http: "
                                                    "{h2UpgradePolicy: UPGRADE, idleTimeout: 20s}}}}",
     lambda cs: "http2_protocol_options" in _http_options(cs[MAIN]).get("explicit_http_config", {})
     and _http_options(cs[MAIN])["common_http_protocol_options"] == {"idle_timeout": "20s"}),
    ("connectionPool.tcp keepalive, maxConnectionDuration", "spec: {host: reviews, trafficPolicy: {connectionPool: "
                                                          "{tcp: {tcpKeepalive: {probes: 3, time: 60s, interval: 10s}, "
                                                          "maxConnectionDuration: 1h}}}}",
     lambda cs: cs[MAIN].get("upstream_connection_options", {}).get("tcp_keepalive") == {
         "keepalive_probes": 3, "keepalive_time": 60, "keepalive_interval": 10}
     and _http_options(cs[MAIN])["common_http_protocol_options"] == {"max_connection_duration": "3600s"}),
    ("connectionPool.http useClientProtocol, maxConcurrentStreams", "spec: {host: reviews, trafficPolicy: "
                                                                    "{connectionPool: {http: {useClientProtocol: true, "
                                                                    "maxConcurrentStreams: 64}}}}",
     lambda cs: _http_options(cs[MAIN]).get("use_downstream_protocol_config", {}).get("http2_protocol_options") == {
         "max_concurrent_streams": 64} and "explicit_http_config" not in _http_options(cs[MAIN])),
    ("loadBalancer warmup", "spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, "
                            "warmupDurationSecs: 30s}}}",
     lambda cs: _lb(cs[MAIN]) == "ROUND_ROBIN"
     and cs[MAIN].get("round_robin_lb_config", {}).get("slow_start_config", {}).get("slow_start_window") == "30s"),
    ("loadBalancer warmup (LEAST_REQUEST, aggression)", "spec: {host: reviews, trafficPolicy: {loadBalancer: "
                                                        "{simple: LEAST_REQUEST, warmup: {duration: 20s, "
                                                        "aggression: 2, minimumPercent: 10}}}}",
     lambda cs: cs[MAIN].get("least_request_lb_config", {}).get("slow_start_config", {}).get(
         "slow_start_window") == "20s"),
    ("outlierDetection", "spec: {host: reviews, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3, "
                         "consecutiveGatewayErrors: 2, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50, "
                         "minHealthPercent: 20}}}",
     lambda cs: cs[MAIN].get("outlier_detection", {}).get("consecutive_5xx") == 3
     and cs[MAIN]["outlier_detection"].get("consecutive_gateway_failure") == 2
     and cs[MAIN]["outlier_detection"].get("interval") == "5s"
     and cs[MAIN]["outlier_detection"].get("base_ejection_time") == "30s"
     and cs[MAIN]["outlier_detection"].get("max_ejection_percent") == 50
     and cs[MAIN].get("common_lb_config", {}).get("healthy_panic_threshold") == {"value": 20}),
    ("outlierDetection changed", "spec: {host: reviews, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 9, "
                                 "interval: 1s}}}",
     lambda cs: cs[MAIN].get("outlier_detection", {}).get("consecutive_5xx") == 9
     and cs[MAIN]["outlier_detection"].get("interval") == "1s" and "common_lb_config" not in cs[MAIN]),
    ("subsets added", "spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, "
                      "{name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]}",
     lambda cs: {V1, V2} <= set(cs) and _lb(cs[V2]) == "RANDOM" and _lb(cs[V1]) == "LEAST_REQUEST"),
    ("subset policy changed, a subset removed", "spec: {host: reviews, subsets: [{name: v2, labels: {version: v2}, "
                                                "trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}}]}",
     lambda cs: V1 not in cs and _thresholds(cs[V2]).get("max_connections") == 3 and _lb(cs[V2]) == "LEAST_REQUEST"),
    ("portLevelSettings", "spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}, portLevelSettings: "
                          "[{port: {number: 9080}, loadBalancer: {simple: ROUND_ROBIN}, "
                          "connectionPool: {tcp: {maxConnections: 21}}}]}}",
     lambda cs: _lb(cs[MAIN]) == "ROUND_ROBIN" and _thresholds(cs[MAIN]).get("max_connections") == 21),
    ("DestinationRule deleted", None,
     lambda cs: _lb(cs[MAIN]) == "LEAST_REQUEST" and "outlier_detection" not in cs[MAIN] and V2 not in cs
     and "hash_policy" not in _route(cs)
     and "config" not in cs[MAIN].get("metadata", {}).get("filter_metadata", {}).get("istio", {})
     and _thresholds(cs[MAIN]).get("max_connections") == 4294967295),
]


def fetch_clusters(admin: Path) -> tuple[Clusters, list[str]]:
    """(active dynamic clusters by name plus the RDS route configs under ROUTES, names of warming
    clusters) from the admin config dump."""
    dump = json.loads(fetch_admin(admin, "/config_dump?resource=dynamic_active_clusters"))
    active = {c["cluster"]["name"]: c["cluster"] for c in dump.get("configs", [])}
    dump = json.loads(fetch_admin(admin, "/config_dump?resource=dynamic_warming_clusters"))
    warming = [c["cluster"]["name"] for c in dump.get("configs", [])]
    dump = json.loads(fetch_admin(admin, "/config_dump?resource=dynamic_route_configs"))
    active[ROUTES] = {r["route_config"]["name"]: r["route_config"] for r in dump.get("configs", [])}
    return active, warming


def detect_synced(cp: ControlPlane, node_id: str) -> bool:
    status = cp.cache.status.get(node_id, {})
    return bool(status) and all(v["state"] == SYNCED for v in status.values())


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_every_destination_rule_change_is_active_within_a_second(tmp_path: Path, delta: bool) -> None:
    state = tmp_path / "state"
    store = Store(state)
    store.apply(load_yaml(MANIFESTS, "dr-e2e.yaml"))
    for pod in ("reviews-v1", "reviews-v2"):
        store.write_status("Pod", "default", pod, {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]})
    with live_controlplane(state, delta=delta) as cp:
        assert wait_programmed(store, "default"), "waypoint never became Programmed"
        [replica] = cp.replicas.values()
        admin = replica.paths.admin
        failures, took = [], []
        for step, spec, check in STEPS:
            if spec is None:
                store.delete([(find_kind("dr"), "default", "reviews")])
            else:
                store.apply(load_yaml(DR + spec, f"{step}.yaml"))
            applied = time.monotonic()
            seen: tuple[Clusters, list[str]] = ({}, [])
            while True:
                try:
                    seen = fetch_clusters(admin)
                except AdminError:
                    pass
                active, warming = seen
                if MAIN in active and not warming and check(active) and detect_synced(cp, replica.node_id):
                    took.append(time.monotonic() - applied)
                    break
                if time.monotonic() - applied > 1.0:
                    status = {t.rsplit(".", 1)[-1]: v["state"] for t, v in cp.cache.status[replica.node_id].items()}
                    failures.append(f"{step}: not active within 1 s (warming: {warming}, status: {status})")
                    break
                time.sleep(0.02)
        mode = "Delta" if delta else "SotW"
        record_fault(f"{len(STEPS)} DestinationRule live changes (every supported field, then delete), {mode} ADS",
                     f"{len(took)} of {len(STEPS)} active and SYNCED within 1 s, slowest "
                     f"{max(took, default=0) * 1000:.0f} ms", "active ≤ 1 s")
        assert not failures, "\n".join(failures)
