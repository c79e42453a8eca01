"""What istiod's deployment controller creates for a waypoint Gateway (istio-facts §4): a
ServiceAccount, a Deployment and a Service named after the Gateway, owned by it."""
from __future__ import annotations

from typing import Any

from .. import labels as L

Body = dict[str, Any]


def build_owner_reference(gateway: Body) -> Body:
    meta = gateway["metadata"]
    return {"apiVersion": gateway["apiVersion"], "kind": "Gateway", "name": meta["name"], "uid": meta["uid"]}


def replica_count(annotations: dict[str, str]) -> int | None:
    """The Gateway's `meshway.io/replicas` (1-100), else None: the Deployment's replicas are then left
    to whoever scales it (`kubectl scale`, an HPA; 1 when it is created), as istiod leaves them."""
    value = annotations.get(L.REPLICAS)
    if value is None:
        return None
    return int(value) if value.isdigit() and 0 < int(value) <= 100 else 1


def build_waypoint_objects(gateway: Body) -> list[tuple[str, Body]]:
    """[(kind, body)] for ServiceAccount, Deployment, Service of this waypoint Gateway."""
    meta, spec = gateway["metadata"], gateway["spec"]
    ns, gw_name = meta["namespace"], meta["name"]
    annotations = meta.get("annotations") or {}
    name = annotations.get(L.NAME_OVERRIDE, gw_name)
    sa = annotations.get(L.SERVICE_ACCOUNT_OVERRIDE, name)
    infra = (spec.get("infrastructure") or {})
    gw_labels = {L.GATEWAY_NAME: gw_name, L.GATEWAY_CLASS_NAME: spec["gatewayClassName"],
                 **(infra.get("labels") or {})}
    managed = {**gw_labels, L.MANAGED: L.MANAGED_VALUE}
    owner = [build_owner_reference(gateway)]
    revision = (meta.get("labels") or {}).get(L.REVISION, "default")

    def obj_meta(labels: Body) -> Body:
        return {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner,
                **({"annotations": dict(infra["annotations"])} if infra.get("annotations") else {})}

    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**obj_meta(gw_labels), "name": sa}}
    pod_labels = {"sidecar.istio.io/inject": "false", L.DATAPLANE_MODE: "none",
                  "service.istio.io/canonical-name": name, "service.istio.io/canonical-revision": "latest",
                  **gw_labels}
    container = {
        "name": "istio-proxy",
        "image": "meshway/waypoint-envoy",
        "args": ["proxy", "waypoint", "--domain", f"$(POD_NAMESPACE).svc.{L.CLUSTER_DOMAIN}",
                 "--serviceCluster", f"{sa}.$(POD_NAMESPACE)"],
        "env": [{"name": "ISTIO_META_SERVICE_ACCOUNT", "value": sa},
                {"name": "ISTIO_META_WORKLOAD_NAME", "value": name},
                {"name": "ISTIO_META_OWNER", "value": f"kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{name}"},
                {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
                {"name": "TRUST_DOMAIN", "value": L.CLUSTER_DOMAIN},
                # where the proxy gets its certificate and config: istiod's xDS port over mTLS
                {"name": "CA_ADDR", "value": f"istiod.{L.ROOT_NAMESPACE}.svc:15012"}],
        "ports": [{"containerPort": 15020, "name": "metrics", "protocol": "TCP"},
                  {"containerPort": 15021, "name": "status-port", "protocol": "TCP"},
                  {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 15,
                           "failureThreshold": 4, "timeoutSeconds": 1},
        "startupProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 1,
                         "failureThreshold": 30, "timeoutSeconds": 1, "initialDelaySeconds": 1},
        # the token the proxy proves its identity with to the CA (istiod's template mounts the same volume;
        # a node may request a pod's token only for an audience the pod declares)
        "volumeMounts": [{"name": "istio-token", "mountPath": "/var/run/secrets/tokens"}],
        # as istiod's template: uid/gid 1337, no privileges (the proxy's files are readable by its group only)
        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": obj_meta(managed),
        "spec": {
            **({"replicas": count} if (count := replica_count(annotations)) is not None else {}),
            "selector": {"matchLabels": {L.GATEWAY_NAME: gw_name}},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {L.REVISION: revision, "prometheus.io/path": "/stats/prometheus",
                                             "prometheus.io/port": "15020", "prometheus.io/scrape": "true"}},
                "spec": {"serviceAccountName": sa, "containers": [container],
                         "volumes": [{"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                             "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}}]},
            },
        },
    }
    ports = [{"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"}]
    for listener in spec["listeners"]:
        app = "hbone" if listener.get("protocol") == "HBONE" else None
        ports.append({"name": listener["name"], "port": listener["port"], "protocol": "TCP",
                      **({"appProtocol": app} if app else {})})
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {**obj_meta(managed),
                     "annotations": {"networking.istio.io/traffic-distribution": "PreferClose"}},
        "spec": {"type": "ClusterIP", "ipFamilyPolicy": "PreferDualStack", "selector": {L.GATEWAY_NAME: gw_name},
                 "ports": _unique_ports(ports)},
    }
    return [("ServiceAccount", service_account), ("Deployment", deployment), ("Service", service)]


def _unique_ports(ports: list[Body]) -> list[Body]:
    seen, out = set(), []
    for port in ports:
        if port["port"] not in seen and port["name"] not in {p["name"] for p in out}:
            seen.add(port["port"])
            out.append(port)
    return out
