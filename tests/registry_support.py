"""A real OCI registry for the WasmPlugin oci:// tests: go-containerregistry's in-memory registry
(`cmd/registry`, built by scripts/build-registry from tools/registry, cached under
~/.cache/meshway), started on 127.0.0.1 with a free port. Images are pushed to it with plain HTTP
as any client pushes them (blob upload POST + PUT, manifest PUT), in the formats Istio reads: the
OCI artifact (a config and the raw module, `application/vnd.module.wasm.content.layer.v1+wasm`),
the Docker image (one gzipped tar layer holding plugin.wasm) and the OCI "compat" image.

The registry has no authentication of its own: `AuthFront` stands before it and asks for what a
registry asks for (Basic credentials, or a Bearer token from a token endpoint it also serves), or
nothing (mode `open`); with `tls` it answers in TLS (`self_signed_tls`: a certificate no client trusts).

Without Go (or when the build fails) the tests are skipped with the reason, and fail under
MESHWAY_REQUIRE_E2E=1 (CI)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _unavailable(reason: str):
    if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
        pytest.fail(f"MESHWAY_REQUIRE_E2E=1: {reason}")
    pytest.skip(reason)


def registry_binary() -> Path:
    """$MESHWAY_REGISTRY_BIN, else the cached build of scripts/build-registry (built now if missing)."""
    if os.environ.get("MESHWAY_REGISTRY_BIN"):
        return Path(os.environ["MESHWAY_REGISTRY_BIN"])
    script = ROOT / "scripts" / "build-registry"
    try:
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"scripts/build-registry could not run: {exc}")
    if out.returncode != 0:
        _unavailable("the OCI registry the oci:// tests need could not be built by scripts/build-registry: "
                     + (out.stderr.strip().splitlines() or ["(no output)"])[-1])
    return Path(out.stdout.strip().splitlines()[-1]) / "registry"


def _send(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as r:
        return r.code, dict(r.headers), r.read()


def tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


class Registry:
    def __init__(self, folder: Path):
        self.log = folder / "registry.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([str(registry_binary()), "-port", "0"], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not (m := re.search(rb"serving on port (\d+)", self.log.read_bytes())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"the registry did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.port = int(m.group(1))
        self.host = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def push_blob(self, repo: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, _ = _send("POST", f"http://{self.host}/v2/{repo}/blobs/uploads/")
        assert status == 202, status
        location = headers["Location"]
        url = location if location.startswith("http") else f"http://{self.host}{location}"
        status, _, body = _send("PUT", url + ("&" if "?" in url else "?") + f"digest={digest}", data,
                                {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repo: str, reference: str, manifest: dict, media_type: str) -> str:
        """PUT the manifest under a tag (or its digest); its digest's hex (what `sha256` names)."""
        body = json.dumps(manifest, separators=(",", ":")).encode()
        status, _, answer = _send("PUT", f"http://{self.host}/v2/{repo}/manifests/{reference}", body,
                                  {"Content-Type": media_type})
        assert status == 201, (status, answer)
        return hashlib.sha256(body).hexdigest()

    def push_artifact(self, repo: str, tag: str, module: bytes) -> str:
        """Istio's *oci* variant: a config and the raw module, custom media types."""
        config = self.push_blob(repo, b"{}")
        layer = self.push_blob(repo, module)
        return self.push_manifest(repo, tag, {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.module.wasm.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.module.wasm.config.v1+json", **config},
                       {"mediaType": "application/vnd.module.wasm.content.layer.v1+wasm", **layer}]}, OCI_MANIFEST)

    def push_docker_image(self, repo: str, tag: str, module: bytes, name: str = "plugin.wasm") -> str:
        """A Docker image (`FROM scratch` + `COPY plugin.wasm ./`): one gzipped tar layer."""
        blob = tar_gz({name: module})
        layer = self.push_blob(repo, blob)
        diff_id = "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
        config = self.push_blob(repo, json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                                                  "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode())
        return self.push_manifest(repo, tag, {
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", **layer}]}, DOCKER_MANIFEST)

    def push_compat_image(self, repo: str, tag: str, module: bytes) -> str:
        """Istio's *compat* variant: an OCI image whose last layer is a tar+gzip holding plugin.wasm."""
        layer = self.push_blob(repo, tar_gz({"plugin.wasm": module}))
        config = self.push_blob(repo, b'{"architecture":"amd64","os":"linux"}')
        return self.push_manifest(repo, tag, {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
            "annotations": {"module.wasm.image/variant": "compat"}}, OCI_MANIFEST)

    def push_index(self, repo: str, tag: str, platforms: dict[tuple[str, str], str]) -> str:
        """An image index over manifests already pushed ((os, arch) -> manifest digest hex)."""
        manifests = []
        for (os_, arch), digest in platforms.items():
            _, headers, body = _send("GET", f"http://{self.host}/v2/{repo}/manifests/sha256:{digest}",
                                     headers={"Accept": OCI_MANIFEST})
            manifests.append({"mediaType": OCI_MANIFEST, "digest": f"sha256:{digest}", "size": len(body),
                              "platform": {"os": os_, "architecture": arch}})
        return self.push_manifest(repo, tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
                                  OCI_INDEX)


class AuthFront:
    """Before the registry, what a registry with accounts answers: 401 and a challenge until the
    request carries `Basic user:password` (mode basic) or a token from `/token` (mode bearer, the
    token given for those credentials, or to anyone when `anonymous`), or nothing (mode open).
    `realm_host`: the host name the challenge gives for the token endpoint; `tls`: serve TLS."""

    def __init__(self, registry: Registry, mode: str, user: str = "me", password: str = "secret",
                 anonymous: bool = False, realm_host: str = "127.0.0.1", bind: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None):
        front = self
        self.registry, self.mode, self.anonymous = registry, mode, anonymous
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.token_requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                front.handle(self)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((bind, 0), Handler)
        if tls is not None:  # the handshake on accept; a client that fails it is dropped
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.host = f"{bind}:{self.port}"
        self.realm = f"http://{realm_host}:{self.port}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        auth = h.headers.get("Authorization", "")
        if h.path.startswith("/token"):
            self.token_requests.append(h.path)
            if auth == self.basic or self.anonymous:
                self._reply(h, 200, json.dumps({"token": "t0ken"}).encode(), {"Content-Type": "application/json"})
            else:
                self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}', {})
            return
        wanted = {"basic": self.basic, "bearer": "Bearer t0ken"}.get(self.mode)
        if wanted is not None and auth != wanted:
            challenge = ('Basic realm="registry"' if self.mode == "basic"
                         else f'Bearer realm="{self.realm}",service="test-registry"')
            self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                        {"WWW-Authenticate": challenge, "Content-Type": "application/json"})
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("accept",)}
        status, got, body = _send("GET", f"http://{self.registry.host}{h.path}", headers=headers)
        self._reply(h, status, body, {k: v for k, v in got.items()
                                      if k.lower() in ("content-type", "docker-content-digest")})


def self_signed_tls(folder: Path, name: str, addresses: tuple[str, ...]) -> ssl.SSLContext:
    """A server context with a self-signed certificate for `name` and `addresses` (valid, but
    signed by no authority a client trusts)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(name), *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses)]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def docker_config_secret(host: str, user: str = "me", password: str = "secret", name: str = "regcred",
                         namespace: str = "default") -> dict:
    """A `kubernetes.io/dockerconfigjson` Secret with credentials for `host`."""
    config = {"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": namespace},
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}}
