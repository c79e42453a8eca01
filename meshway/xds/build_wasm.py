"""WasmPlugin -> Envoy `envoy.filters.http.wasm` on a waypoint's HTTP chains (pure), as istiod
builds it (`pilot/pkg/model/extensions.go`, `listener_waypoint.go:buildWaypointHTTPFilters`).

- Which plugins apply: by `targetRefs` only, as AuthorizationPolicies (the waypoint Gateway, a
  Service or ServiceEntry bound to it, the `istio-waypoint` GatewayClass from the root namespace);
  waypoints ignore selector plugins. `match` is read as istiod reads it for a waypoint (listener
  class SIDECAR_INBOUND, port 0): a selector with mode CLIENT, or with any ports, never matches.
  `type: NETWORK` plugins are not run on waypoints (reported).
- Where: AUTHN after CUSTOM ext_authz and before jwt_authn, AUTHZ before RBAC, STATS then
  UNSPECIFIED_PHASE after fault/cors, just before the router. Within a phase: `priority` high
  first (unset is 0), then the oldest, then namespace/name.
- The filter: named `extensions.istio.io/wasmplugin/<ns>.<name>` (Istio's ECDS resource name),
  plugin name `<ns>.<name>`, `root_id` = `pluginName`, `configuration` = `pluginConfig` as a JSON
  string, runtime V8, `failure_policy` from `failStrategy` (FAIL_CLOSE -> FAIL_CLOSED, FAIL_OPEN,
  FAIL_RELOAD: what Envoy does when the plugin fails while serving), `vmConfig.env` as environment
  variables. The code is the local file the control plane fetched (`meshway.runtime.wasm_modules`:
  the module's bytes, checked against `sha256`, in the state folder named by their sha256; an
  image's by its digest, which is what `sha256` names for an image, as in Istio).
- A module that is not available (cannot be fetched, fails the sha256 check, or Envoy cannot load
  or start it): Istio's agent then puts an RBAC filter in its place, allow-all for FAIL_OPEN
  (`wasm-default-allow`), deny-all for FAIL_CLOSE and FAIL_RELOAD (`wasm-default-deny`: 403
  `RBAC: access denied` on that chain), and so does meshway; the reason goes on the plugin's status.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..mesh.wasm_status import detect_waypoint_match
from ..model.extensions import WasmPlugin
from .build_authz import detect_waypoint_target
from .protos import typed

Body = dict[str, Any]
FILTER_PREFIX = "extensions.istio.io/wasmplugin/"
RUNTIME = "envoy.wasm.runtime.v8"
WASM = "envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"
PHASES = ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE")
FAILURE_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


@dataclass(frozen=True)
class WasmModule:
    """What the control plane made of a plugin's module: the file Envoy loads, or why there is none."""

    path: str | None = None
    sha256: str | None = None
    error: str | None = None


NOT_FETCHED = WasmModule(error="the module has not been fetched")


def plugin_key(plugin: WasmPlugin) -> tuple[str, str]:
    return plugin.namespace, plugin.name


def _order(plugin: WasmPlugin) -> tuple:
    return -(plugin.spec.priority or 0), plugin.metadata.creationTimestamp or "", plugin.namespace, plugin.name


def find_waypoint_wasm_plugins(plugins: Iterable[WasmPlugin], waypoint_ns: str, waypoint: str,
                               service_ns: str | None = None, service: str | None = None,
                               service_kind: str = "Service") -> list[WasmPlugin]:
    """The plugins of one service's chain (the direct chains' when service is None), in order."""
    found = [p for p in plugins if p.spec.type != "NETWORK" and detect_waypoint_match(p)
             and detect_waypoint_target(p, waypoint_ns, waypoint, service_ns, service, service_kind)]
    return sorted(found, key=_order)


def build_wasm_filter(plugin: WasmPlugin, path: str) -> Body:
    spec = plugin.spec
    vm: Body = {"runtime": RUNTIME, "code": {"local": {"filename": path}}}
    env = spec.vmConfig.env if spec.vmConfig and spec.vmConfig.env else []
    inline = {e.name: e.value or "" for e in env if e.valueFrom == "INLINE"}
    host = [e.name for e in env if e.valueFrom == "HOST"]
    if inline or host:
        vm["environment_variables"] = {**({"key_values": inline} if inline else {}),
                                       **({"host_env_keys": host} if host else {})}
    config: Body = {"name": f"{plugin.namespace}.{plugin.name}", "root_id": spec.pluginName or "",
                    "vm_config": vm, "failure_policy": FAILURE_POLICY[spec.failStrategy]}
    if spec.pluginConfig:
        config["configuration"] = typed("google.protobuf.StringValue",
                                        value=json.dumps(spec.pluginConfig, separators=(",", ":")))
    return {"name": FILTER_PREFIX + config["name"], "typed_config": typed(WASM, config=config)}


def build_stand_in_filter(plugin: WasmPlugin) -> Body:
    """What runs in place of a plugin whose module is not available (Istio's agent's fallback)."""
    name = FILTER_PREFIX + f"{plugin.namespace}.{plugin.name}"
    if plugin.spec.failStrategy == "FAIL_OPEN":
        return {"name": name, "typed_config": typed(RBAC, rules_stat_prefix="wasm-default-allow")}
    return {"name": name, "typed_config": typed(RBAC, rules={}, rules_stat_prefix="wasm-default-deny")}


def describe_unavailable(plugin: WasmPlugin, module: WasmModule) -> str:
    effect = ("FAIL_OPEN: the chains it applies to run without it" if plugin.spec.failStrategy == "FAIL_OPEN"
              else f"{plugin.spec.failStrategy}: requests on the chains it applies to are denied (403)")
    return f"module {plugin.spec.url} not available: {module.error}; {effect}"


def build_wasm_filters(plugins: list[WasmPlugin], modules: Mapping[tuple[str, str], WasmModule]
                       ) -> tuple[dict[str, list[Body]], list[tuple[str, str]]]:
    """One chain's plugins (in order) -> phase -> HTTP filters, and the problems to report."""
    phases: dict[str, list[Body]] = {phase: [] for phase in PHASES}
    problems = []
    for plugin in plugins:
        module = modules.get(plugin_key(plugin), NOT_FETCHED)
        if module.path and not module.error:
            phases[plugin.spec.phase].append(build_wasm_filter(plugin, module.path))
        else:
            phases[plugin.spec.phase].append(build_stand_in_filter(plugin))
            problems.append((f"WasmPlugin {plugin.namespace}/{plugin.name}", describe_unavailable(plugin, module)))
    return phases, problems
