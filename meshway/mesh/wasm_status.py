"""WasmPlugin status (pure). istiod writes none; meshway writes `WaypointAccepted` as for a
RequestAuthentication: attached through targetRefs (or why not), `Ignored` for a selector plugin
(only sidecars and gateways would run it), `Unsupported` for what waypoints do not run. Whether
the module itself could be had is the control plane's `Reconciled` condition (it fetches)."""
from __future__ import annotations

from typing import Any

from ..model.extensions import WasmPlugin
from .policy_status import _cond, build_waypoint_condition
from .view import MeshView

Body = dict[str, Any]
WASM_PLUGIN_IGNORED = ("WasmPlugin without targetRefs applies to sidecars and gateways selected by its namespace and "
                       "labels: waypoints ignore selector plugins, so no proxy runs it. Attach it to a waypoint with "
                       "targetRefs (the waypoint Gateway, or a Service or ServiceEntry bound to it)")


def detect_waypoint_match(plugin: WasmPlugin) -> bool:
    """istiod's `matchTrafficSelectors` for a waypoint chain (class SIDECAR_INBOUND, port 0)."""
    selectors = plugin.spec.match or []
    return not selectors or any(s.mode in ("UNDEFINED", "SERVER", "CLIENT_AND_SERVER") and not s.ports
                                for s in selectors)


def find_unsupported(plugin: WasmPlugin) -> str | None:
    """Why a plugin with targetRefs does nothing on waypoints, if it does not."""
    if plugin.spec.type == "NETWORK":
        return "type NETWORK is not supported on waypoints (meshway runs HTTP plugins only)"
    if not detect_waypoint_match(plugin):
        return "match selects no waypoint traffic (waypoints are SERVER, port 0 for istiod's match)"
    return None


def build_wasm_plugin_conditions(plugin: WasmPlugin, view: MeshView) -> list[Body]:
    if not (plugin.spec.targetRefs or plugin.spec.targetRef):
        return [_cond("WaypointAccepted", False, "Ignored", WASM_PLUGIN_IGNORED)]
    unsupported = find_unsupported(plugin)
    if unsupported:
        return [_cond("WaypointAccepted", False, "Unsupported", unsupported)]
    return [build_waypoint_condition(plugin, view)]
