"""WasmPlugin -> Envoy `envoy.filters.http.wasm` on a waypoint's HTTP chains, over ECDS (pure), as
istiod builds it (`pilot/pkg/model/extensions.go`, `listener_waypoint.go:buildWaypointHTTPFilters`).

- Which plugins apply: by `targetRefs` only, as AuthorizationPolicies (the waypoint Gateway, a
  Service or ServiceEntry bound to it, the `istio-waypoint` GatewayClass from the root namespace);
  waypoints ignore selector plugins. `match` is read as istiod reads it for a waypoint (listener
  class SIDECAR_INBOUND, port 0): a selector with mode CLIENT, or with any ports, never matches.
  `type: NETWORK` plugins are not run on waypoints (reported).
- Where: AUTHN after CUSTOM ext_authz and before jwt_authn, AUTHZ before RBAC, STATS then
  UNSPECIFIED_PHASE after fault/cors, just before the router. Within a phase: `priority` high
  first (unset is 0), then the oldest, then namespace/name.
- How it reaches Envoy: over ECDS, as istiod sends it. Each chain's filter is only a name and a
  `config_discovery` (`build_discovery_filter`): ADS, the Wasm and RBAC type URLs, and the
  stand-in below as its `default_config`; the plugin itself is one `TypedExtensionConfig` per
  plugin (`build_extension_config`), named `extensions.istio.io/wasmplugin/<ns>.<name>` (Istio's
  ECDS resource name). The module travels in it as `vm_config.code.local.inline_bytes`: the
  control plane holds the bytes, so any proxy loads it wherever it runs (Istio's agent turns its
  remote code into a local file next to Envoy; meshway has no agent next to a waypoint pod). Sent
  once per plugin and module change, not in every chain of the LDS.
- The Wasm config: plugin name `<ns>.<name>`, `root_id` = `pluginName`, `configuration` =
  `pluginConfig` as a JSON string, runtime V8, `failure_policy` from `failStrategy` (FAIL_CLOSE ->
  FAIL_CLOSED, FAIL_OPEN, FAIL_RELOAD: what Envoy does when the plugin fails while serving),
  `vmConfig.env` as environment variables. The module is what the control plane fetched
  (`meshway.runtime.wasm_modules`: checked against `sha256`; an image's by its digest, which is
  what `sha256` names for an image, as in Istio).
- A module that is not available (cannot be fetched, fails the sha256 check, or Envoy cannot load
  or start it): Istio's agent then puts an RBAC filter in its place, allow-all for FAIL_OPEN
  (`wasm-default-allow`), deny-all for FAIL_CLOSE and FAIL_RELOAD (`wasm-default-deny`: 403
  `RBAC: access denied` on that chain), and so does meshway: that RBAC is the ECDS resource then,
  and always the filter's `default_config` (what Envoy runs if the resource never arrives within
  `initial_fetch_timeout`, or is removed while a draining chain still names it). The reason goes on
  the plugin's status.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
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
INITIAL_FETCH_TIMEOUT = "10s"  # then the default_config (the stand-in) runs; the listener stops warming
FAILURE_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


@dataclass(frozen=True)
class WasmModule:
    """What the control plane made of a plugin's module: its file in the control plane's state
    folder and its bytes (what the proxies are sent), or why there is none. Compared by path,
    sha256 and error (the sha256 names the bytes)."""

    path: str | None = None
    sha256: str | None = None
    error: str | None = None
    code: bytes | None = field(default=None, repr=False, compare=False)


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


def build_resource_name(plugin: WasmPlugin) -> str:
    """istiod's ECDS resource name of a WasmPlugin, also its filter's name in every chain."""
    return f"{FILTER_PREFIX}{plugin.namespace}.{plugin.name}"


def build_wasm_config(plugin: WasmPlugin, code: Body) -> Body:
    """The `envoy.extensions.filters.http.wasm.v3.Wasm` of a plugin; `code`: the vm_config's
    `code.local` (`{"inline_bytes": module}` for proxies, `{"filename": path}` for offline checks)."""
    spec = plugin.spec
    vm: Body = {"runtime": RUNTIME, "code": {"local": code}}
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
    return typed(WASM, config=config)


def build_wasm_filter(plugin: WasmPlugin, path: str) -> Body:
    """The plugin inline in a chain, loading the module from a file: what `envoy --mode validate`
    checks on the control plane's host (`wasm_modules`); proxies get `build_discovery_filter`."""
    return {"name": build_resource_name(plugin), "typed_config": build_wasm_config(plugin, {"filename": path})}


def build_stand_in(plugin: WasmPlugin) -> Body:
    """The RBAC that runs in place of a plugin whose module is not available (Istio's agent's fallback)."""
    if plugin.spec.failStrategy == "FAIL_OPEN":
        return typed(RBAC, rules_stat_prefix="wasm-default-allow")
    return typed(RBAC, rules={}, rules_stat_prefix="wasm-default-deny")


def build_discovery_filter(plugin: WasmPlugin) -> Body:
    """A chain's filter for the plugin: its config comes over ECDS (istiod's `toEnvoyHTTPFilter`),
    the stand-in until then or if it never comes."""
    return {"name": build_resource_name(plugin), "config_discovery": {
        "config_source": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT},
        "default_config": build_stand_in(plugin),
        "type_urls": [f"type.googleapis.com/{WASM}", f"type.googleapis.com/{RBAC}"]}}


def detect_available(module: WasmModule) -> bool:
    return module.code is not None and not module.error


def build_extension_config(plugin: WasmPlugin, module: WasmModule) -> Body:
    """The plugin's ECDS resource (`TypedExtensionConfig`): the Wasm filter with the module inline,
    or the stand-in when the module is not available."""
    if detect_available(module):
        return {"name": build_resource_name(plugin),
                "typed_config": build_wasm_config(plugin, {"inline_bytes": module.code})}
    return {"name": build_resource_name(plugin), "typed_config": build_stand_in(plugin)}


def describe_unavailable(plugin: WasmPlugin, module: WasmModule) -> str:
    effect = ("FAIL_OPEN: the chains it applies to run without it" if plugin.spec.failStrategy == "FAIL_OPEN"
              else f"{plugin.spec.failStrategy}: requests on the chains it applies to are denied (403)")
    return f"module {plugin.spec.url} not available: {module.error}; {effect}"


def build_wasm_filters(plugins: list[WasmPlugin], modules: Mapping[tuple[str, str], WasmModule]
                       ) -> tuple[dict[str, list[Body]], list[tuple[str, str]]]:
    """One chain's plugins (in order) -> phase -> HTTP filters (ECDS references), and the problems to report."""
    phases: dict[str, list[Body]] = {phase: [] for phase in PHASES}
    problems = []
    for plugin in plugins:
        phases[plugin.spec.phase].append(build_discovery_filter(plugin))
        module = modules.get(plugin_key(plugin), NOT_FETCHED)
        if not detect_available(module):
            problems.append((f"WasmPlugin {plugin.namespace}/{plugin.name}", describe_unavailable(plugin, module)))
    return phases, problems


def build_extension_configs(plugins: Iterable[WasmPlugin], modules: Mapping[tuple[str, str], WasmModule]
                            ) -> dict[str, Body]:
    """The ECDS resources of the plugins a waypoint's chains name: one per plugin."""
    return {build_resource_name(p): build_extension_config(p, modules.get(plugin_key(p), NOT_FETCHED))
            for p in plugins}


def find_named_plugins(plugins: Iterable[WasmPlugin], listeners: Iterable[Body]) -> list[WasmPlugin]:
    """The plugins whose ECDS resource some HTTP chain of these listeners names."""
    by_name = {build_resource_name(p): p for p in plugins}
    if not by_name:
        return []
    named: dict[str, None] = {}
    for listener in listeners:
        for chain in listener.get("filter_chains") or []:
            for network_filter in chain.get("filters") or []:
                for f in (network_filter.get("typed_config") or {}).get("http_filters") or []:
                    if "config_discovery" in f and f["name"] in by_name:
                        named[f["name"]] = None
    return [by_name[n] for n in sorted(named)]
