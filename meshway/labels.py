"""Label, annotation and name constants of Istio ambient and the Gateway API (istio-facts §3-§4)."""

USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
DATAPLANE_MODE = "istio.io/dataplane-mode"
INGRESS_USE_WAYPOINT = "istio.io/ingress-use-waypoint"
REVISION = "istio.io/rev"
MANAGED = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-mesh-controller"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_NAME = "gateway.networking.k8s.io/gateway-class-name"
NAME_OVERRIDE = "gateway.istio.io/name-override"
SERVICE_ACCOUNT_OVERRIDE = "gateway.istio.io/service-account"
NAMESPACE_NAME = "kubernetes.io/metadata.name"
POD_TEMPLATE_HASH = "pod-template-hash"

WAYPOINT_CLASS = "istio-waypoint"
MESH_CONTROLLER = "istio.io/mesh-controller"
HBONE_PORT = 15008
NONE = "none"
DEFAULT_WAYPOINT_FOR = "service"
TRAFFIC_TYPES = ("all", "none", "service", "workload")
DEFAULT_WAYPOINT_NAME = "waypoint"
ROOT_NAMESPACE = "istio-system"
CLUSTER_DOMAIN = "cluster.local"
REPLICAS = "meshway.io/replicas"  # waypoint replica count on the Gateway (istiod leaves this to an HPA)
# meshway's own (beyond Istio): `required` on a Service/ServiceEntry or Namespace makes node proxies
# refuse every path around the destination's waypoint (meshway.mesh.traversal); `optional` is Istio's.
WAYPOINT_TRAVERSAL = "meshway.io/waypoint-traversal"
