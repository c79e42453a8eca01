"""Offline check of generated config: the same resources as a static Envoy bootstrap, for
`envoy --mode validate` (EDS clusters inlined as STATIC, RDS route configs inlined in their HTTP
connection managers, ECDS filters given their TypedExtensionConfig's config, SDS secrets as static
secrets)."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from . import protos as P

Body = dict[str, Any]


def _strip_sds_source(node: Any, names: frozenset[str] = frozenset({"default", "ROOTCA"})) -> Any:
    """SDS references to secrets given statically lose their `sds_config` (static secret lookup)."""
    if isinstance(node, dict):
        out = {k: _strip_sds_source(v, names) for k, v in node.items()}
        if "sds_config" in out and out.get("name") in names:
            out.pop("sds_config")
        return out
    if isinstance(node, list):
        return [_strip_sds_source(v, names) for v in node]
    return node


def _inline_rds(node: Any, routes: dict[str, Body]) -> Any:
    """Every `rds` whose RouteConfiguration is given becomes that `route_config` (Envoy validates
    no RDS offline: with no xDS server, it would not look at the routes at all)."""
    if isinstance(node, list):
        return [_inline_rds(v, routes) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline_rds(v, routes) for k, v in node.items()}
    name = (out.get("rds") or {}).get("route_config_name")
    if isinstance(out.get("rds"), dict) and name in routes:
        del out["rds"]
        out["route_config"] = routes[name]
    return out


def _inline_ecds(node: Any, configs: dict[str, Body]) -> Any:
    """Every HTTP filter whose `config_discovery` names a given TypedExtensionConfig gets that
    config as its `typed_config` (what Envoy runs once the resource arrived)."""
    if isinstance(node, list):
        return [_inline_ecds(v, configs) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline_ecds(v, configs) for k, v in node.items()}
    if isinstance(out.get("config_discovery"), dict) and out.get("name") in configs:
        del out["config_discovery"]
        out["typed_config"] = configs[out["name"]]["typed_config"]
    return out


def build_static_bootstrap(resources: dict[str, dict[str, Body]]) -> Body:
    clusters = []
    for name, cluster in resources[P.CLUSTER].items():
        cluster = copy.deepcopy(cluster)
        if cluster.get("type") == "EDS":
            cluster.pop("eds_cluster_config", None)
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = resources[P.ENDPOINT].get(name, {"cluster_name": name})
        clusters.append(cluster)
    listeners = _inline_ecds(_inline_rds(list(resources[P.LISTENER].values()), resources.get(P.ROUTE) or {}),
                             resources.get(P.EXTENSION_CONFIG) or {})
    static = {"listeners": listeners, "clusters": clusters,
              "secrets": [{"name": n, **{k: v for k, v in s.items() if k != "name"}}
                          for n, s in resources[P.SECRET].items()]}
    return {
        "node": {"id": "validate", "cluster": "validate"},
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": P.typed(
            "envoy.extensions.bootstrap.internal_listener.v3.InternalListener", buffer_size_kb=64)}],
        "static_resources": _strip_sds_source(static, frozenset(resources[P.SECRET])),
    }


def run_validate(resources: dict[str, dict[str, Body]], envoy: str = "envoy") -> tuple[bool, str]:
    """(accepted, Envoy's output) for `envoy --mode validate` on the static form of `resources`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bootstrap.json"
        path.write_text(json.dumps(build_static_bootstrap(resources), default=P.json_default))
        proc = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                              capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def summarize_rejection(output: str) -> str:
    """Envoy's reason, without the log prefix, the temporary file name and the proto dump."""
    text = output.split("error initializing configuration", 1)[-1]
    text = re.sub(r"^\s*'[^']*':\s*", "", text)
    if "goo.gle/debugproto" in text:
        text = text.rsplit("\n:", 1)[-1]
    return " ".join(text.split())[:1000]


class ValidationCache:
    """`envoy --mode validate` verdicts by content hash (listeners, clusters, routes): about 0.5 s
    each, so only config whose patched output changed is validated again."""

    def __init__(self, envoy: str, size: int = 256):
        self.envoy, self.size = envoy, size
        self.verdicts: dict[str, tuple[bool, str]] = {}

    def check(self, resources: dict[str, dict[str, Body]]) -> tuple[bool, str]:
        """(accepted, Envoy's reason): also refused when a resource is not a valid Envoy message."""
        key = hashlib.sha256(json.dumps([resources.get(t) for t in (P.LISTENER, P.CLUSTER, P.ROUTE,
                                                                    P.EXTENSION_CONFIG)],
                                        sort_keys=True, default=P.json_default).encode()).hexdigest()
        if key in self.verdicts:
            return self.verdicts[key]
        try:
            verdict = self._judge(resources)
        except (OSError, subprocess.TimeoutExpired) as exc:  # no verdict: not cached
            return False, f"cannot run `envoy --mode validate`: {exc}"
        self.verdicts[key] = verdict
        while len(self.verdicts) > self.size:
            self.verdicts.pop(next(iter(self.verdicts)))
        return verdict

    def _judge(self, resources: dict[str, dict[str, Body]]) -> tuple[bool, str]:
        try:
            for type_url, items in resources.items():
                for body in items.values():
                    P.to_message(type_url, body)
        except Exception as exc:  # json_format's errors
            return False, f"not a valid Envoy resource: {str(exc).splitlines()[0]}"
        ok, output = run_validate(resources, self.envoy)
        return ok, "" if ok else summarize_rejection(output)
