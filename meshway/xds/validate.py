"""Offline check of generated config: the same resources as a static Envoy bootstrap, for
`envoy --mode validate` (EDS clusters inlined as STATIC, SDS secrets as static secrets)."""
from __future__ import annotations

import copy
import json
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


def build_static_bootstrap(resources: dict[str, dict[str, Body]]) -> Body:
    clusters = []
    for name, cluster in resources[P.CLUSTER].items():
        cluster = copy.deepcopy(cluster)
        if cluster.get("type") == "EDS":
            cluster.pop("eds_cluster_config")
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = resources[P.ENDPOINT].get(name, {"cluster_name": name})
        clusters.append(cluster)
    static = {"listeners": list(resources[P.LISTENER].values()), "clusters": clusters,
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
        path.write_text(json.dumps(build_static_bootstrap(resources)))
        proc = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                              capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
