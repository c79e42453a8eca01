"""WasmPlugin oci:// modules pulled by the control plane's fetcher (`WasmModules`) from a real
registry (go-containerregistry's, tests/registry_support.py), Envoy checking each module as in
the control plane: the three image formats Istio reads and an index, `sha256` as the image
digest, a missing tag or image, images that hold no module, `imagePullPolicy` against a tag that
moves, an imagePullSecret's Basic credentials, a Bearer token (Istio's realm guard refuses
a token endpoint on a loopback address, and takes one named by host), and Istio's
WASM_INSECURE_REGISTRIES against the registry behind TLS with a certificate no one trusts, and
plain HTTP from a registry named by host (Istio's fallback, no setting needed)."""
from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from registry_support import AuthFront, Registry, docker_config_secret, self_signed_tls
from wasm_support import assemble
from xds_support import ENVOY

from meshway.model import load_yaml
from meshway.model.extensions import WasmPlugin
from meshway.runtime.oci_image import parse_insecure_registries
from meshway.runtime.wasm_modules import WasmModules


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    r = Registry(tmp_path_factory.mktemp("registry"))
    yield r
    r.close()


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("modules")
    return {name: assemble(name, folder).read_bytes() for name in ("add_header", "deny_path")}


def plugin(url: str, extra: str = "") -> WasmPlugin:
    text = f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: p, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  url: {url}
  pluginConfig: {{name: x-a, value: b}}
  {extra}
"""
    return load_yaml(text, "wp.yaml")[0].obj  # type: ignore[return-value]


def machine_name() -> tuple[str, str]:
    """This machine's host name and its address: a registry named so is not a local one."""
    name = socket.gethostname()
    try:
        return name, socket.gethostbyname(name)
    except OSError as exc:
        pytest.fail(f"this test names a server by this machine's host name, {name!r}, which does not resolve: {exc}")


def test_the_image_formats_istio_reads(tmp_path: Path, registry: Registry, modules: dict) -> None:
    add = modules["add_header"]
    digests = {"artifact": registry.push_artifact("wasm/add", "artifact", add),
               "docker": registry.push_docker_image("wasm/add", "docker", add),
               "compat": registry.push_compat_image("wasm/add", "compat", add)}
    digests["index"] = registry.push_index("wasm/add", "index", {("linux", "arm64"): digests["artifact"],
                                                                 ("linux", "amd64"): digests["compat"]})
    fetcher = WasmModules(tmp_path, ENVOY)
    for tag, digest in digests.items():
        got = fetcher.fetch_module(plugin(f"oci://{registry.host}/wasm/add:{tag}"))
        if tag == "index":
            digest = digests["compat"]  # linux/amd64's manifest is the image
        assert (got.error, got.sha256, got.path) == (None, digest, str(tmp_path / "wasm" / f"{digest}.wasm")), tag
        assert Path(got.path).read_bytes() == add
    bare = fetcher.fetch_module(plugin(f"{registry.host}/wasm/add:docker"))  # a bare reference is an image
    pinned = fetcher.fetch_module(plugin(f"oci://{registry.host}/wasm/add@sha256:{digests['artifact']}"))
    assert (bare.sha256, pinned.sha256) == (digests["docker"], digests["artifact"])


def test_sha256_missing_images_and_images_without_a_module(tmp_path: Path, registry: Registry,
                                                           modules: dict) -> None:
    digest = registry.push_artifact("wasm/deny", "v1", modules["deny_path"])
    registry.push_docker_image("wasm/deny", "misnamed", modules["deny_path"], name="module.wasm")
    registry.push_artifact("wasm/deny", "not-wasm", b"<html>not a module</html>")
    fetcher = WasmModules(tmp_path, ENVOY)
    url = f"oci://{registry.host}/wasm/deny"
    assert fetcher.fetch_module(plugin(f"{url}:v1", f"sha256: {digest}")).error is None
    wrong = fetcher.fetch_module(plugin(f"{url}:v1", f"sha256: '{'0' * 64}'")).error
    assert wrong == f"cannot fetch {url}:v1: sha256 mismatch: the image's digest is {digest}, the plugin expects " \
                    f"{'0' * 64}"
    missing = fetcher.fetch_module(plugin(f"{url}:v2")).error
    assert missing == (f"cannot fetch {url}:v2: could not fetch manifest: GET http://{registry.host}/v2/wasm/deny/"
                       "manifests/v2: MANIFEST_UNKNOWN: Unknown manifest")
    assert "NAME_UNKNOWN" in fetcher.fetch_module(plugin(f"oci://{registry.host}/wasm/nothing:v1")).error
    assert "plugin.wasm not found in the archive" in fetcher.fetch_module(plugin(f"{url}:misnamed")).error
    assert "(oci variant) is not a Wasm binary" in fetcher.fetch_module(plugin(f"{url}:not-wasm")).error


def test_pull_policy_against_a_moving_tag(tmp_path: Path, registry: Registry, modules: dict) -> None:
    first = {tag: registry.push_artifact("wasm/moving", tag, modules["add_header"]) for tag in ("1.0", "latest")}
    fetcher = WasmModules(tmp_path, ENVOY)
    url = f"oci://{registry.host}/wasm/moving"
    cases = {"if-not-present": plugin(f"{url}:1.0"), "latest": plugin(f"{url}:latest"),
             "always": plugin(f"{url}:1.0", "imagePullPolicy: Always")}
    assert {k: fetcher.fetch_module(p).sha256 for k, p in cases.items()} == \
        {"if-not-present": first["1.0"], "latest": first["latest"], "always": first["1.0"]}
    moved = {tag: registry.push_docker_image("wasm/moving", tag, modules["deny_path"]) for tag in ("1.0", "latest")}
    # The tag moved, the plugins did not: every module is reused.
    assert {k: fetcher.fetch_module(p).sha256 for k, p in cases.items()} == \
        {"if-not-present": first["1.0"], "latest": first["latest"], "always": first["1.0"]}
    changed = {k: p.model_copy(update={"spec": p.spec.model_copy(update={"pluginConfig": {"name": "x-c",
                                                                                           "value": "d"}})})
               for k, p in cases.items()}
    # The plugins changed: Always and an explicit :latest are pulled again, IfNotPresent is not.
    assert {k: fetcher.fetch_module(p).sha256 for k, p in changed.items()} == \
        {"if-not-present": first["1.0"], "latest": moved["latest"], "always": moved["1.0"]}


def test_an_image_pull_secret_gives_basic_credentials(tmp_path: Path, registry: Registry, modules: dict) -> None:
    digest = registry.push_artifact("wasm/private", "v1", modules["add_header"])
    front = AuthFront(registry, "basic")
    secrets = {("default", "regcred"): docker_config_secret(front.host),
               ("default", "wrong"): docker_config_secret(front.host, password="nope", name="wrong")}
    fetcher = WasmModules(tmp_path, ENVOY, read_secret=lambda ns, name: secrets.get((ns, name)))
    url = f"oci://{front.host}/wasm/private:v1"
    try:
        assert "UNAUTHORIZED: authentication required" in fetcher.fetch_module(plugin(url)).error
        assert "UNAUTHORIZED" in fetcher.fetch_module(plugin(url, "imagePullSecret: wrong")).error
        assert fetcher.fetch_module(plugin(url, "imagePullSecret: missing")).error == \
            f"cannot fetch {url}: imagePullSecret default/missing: secret not found"
        got = fetcher.fetch_module(plugin(url, "imagePullSecret: regcred"))
        assert (got.error, got.sha256) == (None, digest)
        nowhere = WasmModules(tmp_path / "other", ENVOY).fetch_module(plugin(url, "imagePullSecret: regcred"))
        assert "imagePullSecret default/regcred: Secrets are read only on Kubernetes" in nowhere.error
    finally:
        front.close()


def test_bearer_tokens_and_istios_realm_guard(tmp_path: Path, registry: Registry, modules: dict) -> None:
    digest = registry.push_compat_image("wasm/token", "v1", modules["add_header"])
    loopback = AuthFront(registry, "bearer", anonymous=True)
    try:
        got = WasmModules(tmp_path, ENVOY).fetch_module(plugin(f"oci://{loopback.host}/wasm/token:v1"))
        assert got.error.endswith("rejected unsafe bearer realm: realm targets private/loopback/link-local IP")
        assert loopback.token_requests == []  # never asked
    finally:
        loopback.close()
    name, address = machine_name()  # a realm named by host passes Istio's guard (it reads IP literals only)
    anonymous = AuthFront(registry, "bearer", anonymous=True, realm_host=name, bind=address)
    try:
        got = WasmModules(tmp_path / "anonymous", ENVOY).fetch_module(plugin(f"oci://{anonymous.host}/wasm/token:v1"))
        assert (got.error, got.sha256) == (None, digest)  # an anonymous token, as public registries give
    finally:
        anonymous.close()
    by_name = AuthFront(registry, "bearer", realm_host=name, bind=address)
    secrets = {("default", "regcred"): docker_config_secret(by_name.host)}
    fetcher = WasmModules(tmp_path, ENVOY, read_secret=lambda ns, n: secrets.get((ns, n)))
    url = f"oci://{by_name.host}/wasm/token:v1"
    try:
        assert "token: GET" in fetcher.fetch_module(plugin(url)).error  # anonymous: no token for us
        got = fetcher.fetch_module(plugin(url, "imagePullSecret: regcred"))
        assert (got.error, got.sha256) == (None, digest)
        assert by_name.token_requests[-1] == "/token?scope=repository%3Awasm%2Ftoken%3Apull&service=test-registry"
    finally:
        by_name.close()


def test_wasm_insecure_registries_skips_the_certificate_check(tmp_path: Path, registry: Registry,
                                                             modules: dict) -> None:
    """The registry behind TLS with a self-signed certificate, named by host (https only, as for any
    registry that is not local): refused with the setting's name, pulled when the setting lists it."""
    digest = registry.push_artifact("wasm/tls", "v1", modules["add_header"])
    name, address = machine_name()
    front = AuthFront(registry, "open", bind=address, tls=self_signed_tls(tmp_path, name, (address, "127.0.0.1")))
    host = f"{name}:{front.port}"
    url = f"oci://{host}/wasm/tls:v1"
    blob = f"https://{host}/v2/wasm/tls/blobs/sha256:{hashlib.sha256(modules['add_header']).hexdigest()}"

    def fetch(setting: str, target: str) -> tuple:
        got = WasmModules(tmp_path / f"state{len(list(tmp_path.iterdir()))}", ENVOY,
                          insecure_registries=parse_insecure_registries(setting)).fetch_module(plugin(target))
        return got.error, got.sha256

    try:
        error, _ = fetch("", url)
        assert error.startswith(f"cannot fetch {url}: GET https://{host}/v2/: TLS certificate not trusted (self")
        assert error.endswith(f"); list {host} in WASM_INSECURE_REGISTRIES to pull without checking it")
        for setting in (host, "*", f"other.example:5000, {host}"):
            assert fetch(setting, url) == (None, digest), setting
        for setting in (name, f"{name}:1", "other.example"):  # Istio matches the URL's host and port
            assert "TLS certificate not trusted" in fetch(setting, url)[0], setting
        # an https:// module (here the layer's blob URL): Istio's HTTP fetcher takes the setting too
        assert fetch("", blob)[0] == (f"cannot fetch {blob}: TLS certificate not trusted (self-signed certificate); "
                                      f"list {host} in WASM_INSECURE_REGISTRIES to fetch without checking it")
        assert fetch(host, blob) == (None, hashlib.sha256(modules["add_header"]).hexdigest())
    finally:
        front.close()
    # a local registry (127.0.0.1) is tried in plain HTTP too, which a TLS port does not answer
    local_front = AuthFront(registry, "open", tls=self_signed_tls(tmp_path, name, ("127.0.0.1",)))
    local = local_front.host
    try:
        error, _ = fetch("", f"oci://{local}/wasm/tls:v1")
        assert f"GET https://{local}/v2/: TLS certificate not trusted" in error
        assert f"; GET http://{local}/v2/: " in error  # both tries, as go-containerregistry's ping reports them
        assert fetch(local, f"oci://{local}/wasm/tls:v1") == (None, digest)
    finally:
        local_front.close()


def test_plain_http_needs_no_setting(tmp_path: Path, registry: Registry, modules: dict) -> None:
    """A registry named by host that answers in plain HTTP: Istio's puller falls back to it
    ("server gave HTTP response to HTTPS client"), WASM_INSECURE_REGISTRIES or not."""
    digest = registry.push_docker_image("wasm/plain", "v1", modules["deny_path"])
    name, address = machine_name()
    front = AuthFront(registry, "open", bind=address)
    try:
        got = WasmModules(tmp_path, ENVOY).fetch_module(plugin(f"oci://{name}:{front.port}/wasm/plain:v1"))
        assert (got.error, got.sha256) == (None, digest)
    finally:
        front.close()
