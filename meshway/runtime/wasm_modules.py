"""WasmPlugin modules for the waypoints, fetched by the control plane (the job istio-agent does
next to each Envoy in Istio): `file://` read, `http://` and `https://` downloaded, `oci://` images
(and bare image references) pulled from their registry (`oci_registry`, with the plugin's
`imagePullSecret`). The bytes are checked against the plugin's `sha256` (for an image: the image's
manifest digest, as Istio checks it), kept in the state folder as `wasm/<sha256>.wasm` (an image's
module is named by its digest, so a pull whose digest is there already reads no layer; the
proxies get the bytes inline over ECDS, not the file), and each (module, plugin configuration) is
tried once with `envoy --mode validate`, since Envoy refuses a whole listener whose plugin cannot load, start or take its configuration.
The outcome per plugin is a `WasmModule` for `build_wasm`.

A fetched module is reused while the plugin's URL, `sha256` and pull secret stay the same
(`imagePullPolicy` IfNotPresent, the default); with `Always`, and by default for an image tagged
`:latest`, it is fetched again whenever the plugin's spec changes (Istio: its resourceVersion).
A failed fetch is tried again after `retry_after` seconds."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from ..model.extensions import WasmPlugin, parse_plugin_url
from .oci_auth import read_pull_secret
from .oci_image import detect_insecure, parse_image_ref
from .oci_registry import read_oci_module
from ..private import make_private_dir
from ..xds import protos as P
from ..xds.build_wasm import WasmModule, build_wasm_filter, plugin_key
from ..xds.validate import run_validate, summarize_rejection

log = logging.getLogger(__name__)
MAX_BYTES = 64 << 20
SecretReader = Callable[[str, str], "dict[str, Any] | None"]  # (namespace, name) -> the Secret, None: absent


def detect_reuse(plugin: WasmPlugin) -> bool:
    """Istio's `shouldIgnoreResourceVersion`: whether a fetched module outlives changes to the plugin."""
    policy = plugin.spec.imagePullPolicy
    if policy in ("Always", "IfNotPresent"):
        return policy == "IfNotPresent"
    scheme, url = parse_plugin_url(plugin.spec.url)
    return scheme != "oci" or not urlsplit(url).path.endswith(":latest")


def find_expected_sha256(plugin: WasmPlugin) -> str:
    """The sha256 the module must have: the plugin's, else for an image pinned by digest that digest."""
    if plugin.spec.sha256:
        return plugin.spec.sha256
    scheme, url = parse_plugin_url(plugin.spec.url)
    if scheme == "oci":
        try:
            digest = parse_image_ref(url).digest
        except ValueError:
            return ""
        return digest[len("sha256:"):] if digest else ""
    return ""


def build_fetch_key(plugin: WasmPlugin) -> tuple:
    """What a fetch is kept under: URL, sha256, pull secret, and the spec when it is not reused."""
    spec = plugin.spec
    secret = (plugin.namespace, spec.imagePullSecret) if spec.imagePullSecret else None
    changes = None if detect_reuse(plugin) else json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return spec.url, find_expected_sha256(plugin), secret, changes


def read_module(url: str, timeout: float, insecure: bool = False) -> bytes:
    """A file:// or http(s):// module's bytes (OSError and ValueError carry why not); `insecure`:
    the server's TLS certificate is not checked (Istio's HTTP fetcher for WASM_INSECURE_REGISTRIES)."""
    scheme, url = parse_plugin_url(url)
    if scheme == "file":
        data = Path(url[len("file://"):]).read_bytes()
    else:
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310: http(s)
                data = response.read(MAX_BYTES + 1)
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise
            why = exc.reason.verify_message or exc.reason
            raise ValueError(f"TLS certificate not trusted ({why}); list {urlsplit(url).netloc} in "
                             "WASM_INSECURE_REGISTRIES to fetch without checking it") from None
    if len(data) > MAX_BYTES:
        raise ValueError(f"the module is larger than {MAX_BYTES >> 20} MiB")
    return data


def build_check_resources(filter_: dict) -> dict[str, dict[str, dict]]:
    """One internal listener whose HTTP chain holds only the plugin: what `envoy --mode validate` loads."""
    hcm = P.typed("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                  stat_prefix="wasm_check", route_config={"name": "check"}, http_filters=[
                      filter_, {"name": "envoy.filters.http.router",
                                "typed_config": P.typed("envoy.extensions.filters.http.router.v3.Router")}])
    listener = {"name": "wasm_check", "internal_listener": {}, "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}
    return {P.LISTENER: {"wasm_check": listener}, P.CLUSTER: {}, P.ENDPOINT: {}, P.ROUTE: {}, P.SECRET: {}}


class WasmModules:
    def __init__(self, state_dir: Path | str, envoy: str, timeout: float = 5.0, retry_after: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, read_secret: SecretReader | None = None,
                 insecure_registries: frozenset[str] = frozenset()):
        """`read_secret`: where imagePullSecrets are read (None: nowhere, a plugin naming one is
        reported); `insecure_registries`: hosts whose TLS certificate is not checked (`*`: all),
        Istio's WASM_INSECURE_REGISTRIES (`oci_image.parse_insecure_registries`), matched against
        the URL's host and port as Istio matches them (`docker.io`, `localhost:5000`)."""
        self.dir = Path(state_dir) / "wasm"
        self.envoy, self.timeout, self.retry_after, self.clock = envoy, timeout, retry_after, clock
        self.read_secret, self.insecure_registries = read_secret, insecure_registries
        self._downloads: dict[tuple, tuple[str | None, str | None, float]] = {}  # -> sha, error, when
        self._checks: dict[str, str | None] = {}  # the filter as JSON -> Envoy's reason to refuse it
        self._code: dict[str, bytes] = {}  # sha256 -> the module's bytes (one object per module: sent inline)

    def fetch_modules(self, plugins: Iterable[WasmPlugin]) -> dict[tuple[str, str], WasmModule]:
        modules = {plugin_key(p): self.fetch_module(p) for p in plugins
                   if (p.spec.targetRefs or p.spec.targetRef) and p.spec.type != "NETWORK"}
        used = {m.sha256 for m in modules.values()}
        self._code = {sha: code for sha, code in self._code.items() if sha in used}  # no plugin's: not kept in memory
        return modules

    def fetch_module(self, plugin: WasmPlugin) -> WasmModule:
        sha, error = self._bytes(plugin)
        if error:
            return WasmModule(error=error)
        path = str(self.dir / f"{sha}.wasm")
        refused = self._check(plugin, path)
        if refused:
            return WasmModule(path, sha, f"Envoy cannot run it: {refused}")
        try:
            code = self._read(sha)
        except OSError as exc:
            return WasmModule(path, sha, f"cannot read {path}: {exc}")
        return WasmModule(path, sha, None, code)

    def _read(self, sha: str) -> bytes:
        """The module's bytes, read once: proxies get them inline (ECDS), wherever they run."""
        if sha not in self._code:
            self._code[sha] = (self.dir / f"{sha}.wasm").read_bytes()
        return self._code[sha]

    def _bytes(self, plugin: WasmPlugin) -> tuple[str | None, str | None]:
        """(sha256 of the module now in the cache, None) or (None, why not)."""
        url, expected = plugin.spec.url, find_expected_sha256(plugin)
        scheme = parse_plugin_url(url)[0]
        if expected and (self.dir / f"{expected}.wasm").exists():
            return expected, None
        key = build_fetch_key(plugin)
        done = self._downloads.get(key)
        if scheme != "file" and done and (done[1] is None or self.clock() - done[2] < self.retry_after):
            return done[0], done[1]
        try:
            if scheme == "oci":
                sha, data = self._pull(plugin, expected)
            else:
                data = read_module(url, self.timeout, detect_insecure(urlsplit(url).netloc, self.insecure_registries))
                sha = hashlib.sha256(data).hexdigest()
                if expected and sha != expected:
                    raise ValueError(f"sha256 mismatch: the module's is {sha}, the plugin expects {expected}")
            if data is not None:
                self._store(sha, data)
            result: tuple[str | None, str | None] = (sha, None)
        except (OSError, ValueError) as exc:
            result = (None, f"cannot fetch {parse_plugin_url(url)[1]}: {exc}")
            log.warning("WasmPlugin module: %s", result[1])
        self._downloads[key] = (*result, self.clock())
        return result

    def _pull(self, plugin: WasmPlugin, expected: str) -> tuple[str, bytes | None]:
        """(image digest, the module; None when `wasm/<digest>.wasm` is there already)."""
        config = None
        if plugin.spec.imagePullSecret:
            ns, name = plugin.namespace, plugin.spec.imagePullSecret
            if self.read_secret is None:
                raise ValueError(f"imagePullSecret {ns}/{name}: Secrets are read only on Kubernetes "
                                 "(`meshway controlplane --kubeconfig`)")
            config = read_pull_secret(self.read_secret(ns, name), ns, name)
        url = parse_plugin_url(plugin.spec.url)[1]
        insecure = detect_insecure(urlsplit(url).netloc, self.insecure_registries)
        return read_oci_module(url, expected, config, self.timeout, MAX_BYTES,
                               lambda digest: (self.dir / f"{digest}.wasm").exists(), insecure)

    def _store(self, sha: str, data: bytes) -> None:
        path = self.dir / f"{sha}.wasm"
        if path.exists():
            return
        make_private_dir(self.dir)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _check(self, plugin: WasmPlugin, path: str) -> str | None:
        """Envoy's reason to refuse the plugin with this module and configuration (None: accepted)."""
        filter_ = build_wasm_filter(plugin, path)
        config = filter_["typed_config"]["config"]
        key = repr((config.get("root_id"), config.get("configuration"), config.get("vm_config"),
                    config.get("failure_policy")))
        if key not in self._checks:
            ok, output = run_validate(build_check_resources(filter_), self.envoy)
            why = "; ".join(dict.fromkeys(re.findall(r"Wasm VM failed (.*)", output)))
            self._checks[key] = None if ok else summarize_rejection(output) + (f" ({why})" if why else "")
        return self._checks[key]
