"""Pulling a Wasm module from an OCI distribution registry: the I/O around `oci_image`'s decisions,
plain HTTP requests as go-containerregistry's `remote` makes them for Istio's agent. A ping
(`GET /v2/`) finds the scheme (https; http when it answers in plain HTTP, or for a local registry
that does not speak TLS) and the challenge; the manifest is read by tag or digest (an index: its
linux/amd64 manifest, as Istio's puller picks it), its sha256 is the image digest `sha256` is checked
against; then the one layer that holds the module, checked against its digest. `insecure` (the
registry is in WASM_INSECURE_REGISTRIES): its TLS certificate is not checked."""
from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Mapping

from .oci_auth import (Challenge, Credentials, build_basic_auth, build_token_query, detect_unsafe_realm,
                       find_credentials, parse_challenges)
from .oci_image import (DOCKER_LIST, MANIFEST_ACCEPT, OCI_INDEX, Body, ImageRef, detect_local_registry,
                        detect_wasm_binary, extract_plugin_wasm, find_platform_manifest, find_wasm_layer,
                        parse_image_ref)

MANIFEST_LIMIT = 4 << 20
INDEX_DEPTH = 4  # an index may name indexes (go-containerregistry recurses); this deep at most


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a registry's redirect (blobs often live elsewhere) without its credentials elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _send(url: str, headers: Mapping[str, str], timeout: float, insecure: bool, limit: int,
          data: bytes | None = None) -> Response:
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    opener = urllib.request.build_opener(_Redirects(), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=data, headers=dict(headers))
    try:
        with opener.open(request, timeout=timeout) as r:
            body = r.read(limit + 1)
            status, got, final = r.status, r.headers, r.geturl()
    except urllib.error.HTTPError as r:
        body, status, got, final = r.read(64 << 10), r.code, r.headers, r.geturl()
    if len(body) > limit:
        raise ValueError(f"GET {url}: larger than {limit >> 20} MiB")
    return Response(status, {k.lower(): v for k, v in got.items()}, body, final)


def describe_failure(method: str, response: Response) -> str:
    """The registry's error as go-containerregistry words it: `GET <url>: CODE: message`."""
    try:
        errors = json.loads(response.body).get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        text = ""
    return f"{method} {response.url}: {text or f'unexpected status code {response.status}'}"


class Puller:
    """One image from one registry, logged in once (anonymous, Basic, or a Bearer token)."""

    def __init__(self, ref: ImageRef, credentials: Credentials | None, timeout: float, insecure: bool = False):
        self.ref, self.credentials, self.timeout, self.insecure = ref, credentials, timeout, insecure
        self.base = ""
        self.auth: dict[str, str] = {}

    def _get(self, url: str, headers: Mapping[str, str], limit: int) -> Response:
        return _send(url, {**headers, **self.auth}, self.timeout, self.insecure, limit)

    def login(self) -> None:
        failures: list[str] = []
        for scheme in ("https", "http"):
            url = f"{scheme}://{self.ref.registry}/v2/"
            try:
                ping = _send(url, {}, self.timeout, self.insecure, 64 << 10)
            except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                failures.append(f"GET {url}: {self._describe(reason)}")
                plain = isinstance(reason, ssl.SSLError) and not isinstance(reason, ssl.SSLCertVerificationError)
                if scheme == "https" and (plain or detect_local_registry(self.ref.registry)):
                    continue  # Istio: "server gave HTTP response" -> plain HTTP; go: local registries too
                raise ValueError("; ".join(failures)) from None
            break
        self.base = f"{scheme}://{self.ref.registry}"
        if ping.status == 200:
            return
        if ping.status != 401:
            raise ValueError(describe_failure("GET", ping))
        challenges = parse_challenges(ping.headers.get("www-authenticate", ""))
        for c in challenges:
            why = detect_unsafe_realm(c.params.get("realm", "")) if c.scheme == "bearer" else None
            if why:
                raise ValueError(f"rejected unsafe bearer realm: {why}")
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            self.auth = {"Authorization": f"Bearer {self._token(bearer)}"}
        elif self.credentials and self.credentials.username:
            self.auth = {"Authorization": build_basic_auth(self.credentials)}

    def _describe(self, reason: object) -> str:
        """Why a ping failed; an untrusted certificate names the setting that skips the check."""
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (f"TLS certificate not trusted ({reason.verify_message or reason}); list {self.ref.registry} "
                    "in WASM_INSECURE_REGISTRIES to pull without checking it")
        return str(reason) or type(reason).__name__

    def _token(self, challenge: Challenge) -> str:
        creds = self.credentials or Credentials()
        if creds.registry_token:
            return creds.registry_token
        query = build_token_query(challenge, self.ref)
        realm, data, headers = challenge.params["realm"], None, {}
        if creds.identity_token:  # an OAuth2 refresh token: POSTed, as go-containerregistry does
            data = urllib.parse.urlencode({**query, "grant_type": "refresh_token", "client_id": "meshway",
                                           "refresh_token": creds.identity_token}).encode()
        else:
            realm += ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
            if creds.username:
                headers["Authorization"] = build_basic_auth(creds)
        r = _send(realm, headers, self.timeout, self.insecure, 1 << 20, data)
        if r.status != 200:
            raise ValueError("token: " + describe_failure("POST" if data else "GET", r))
        try:
            body = json.loads(r.body)
            return body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise ValueError(f"token: {r.url} answered no token") from None

    def read_manifest(self) -> tuple[str, Body, str]:
        """(sha256 hex of the image manifest, the manifest, its media type)."""
        if not self.base:
            self.login()
        identifier = self.ref.identifier
        for _ in range(INDEX_DEPTH + 1):
            url = f"{self.base}/v2/{self.ref.repository}/manifests/{identifier}"
            r = self._get(url, {"Accept": MANIFEST_ACCEPT}, MANIFEST_LIMIT)
            if r.status != 200:
                raise ValueError(f"could not fetch manifest: {describe_failure('GET', r)}")
            digest = hashlib.sha256(r.body).hexdigest()
            if identifier.startswith("sha256:") and identifier != f"sha256:{digest}":
                raise ValueError(f"could not fetch manifest: {url} is sha256:{digest}, not {identifier}")
            try:
                manifest = json.loads(r.body)
            except ValueError:
                raise ValueError(f"could not fetch manifest: {url} is not JSON") from None
            media_type = manifest.get("mediaType") or r.headers.get("content-type", "").split(";")[0]
            if media_type not in (OCI_INDEX, DOCKER_LIST):
                return digest, manifest, media_type
            identifier = find_platform_manifest(manifest)["digest"]
        raise ValueError(f"could not fetch image: indexes nested more than {INDEX_DEPTH} deep")

    def read_blob(self, descriptor: Body, limit: int) -> bytes:
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{descriptor.get('digest')}"
        r = self._get(url, {}, limit)
        if r.status != 200:
            raise ValueError(f"could not fetch layer: {describe_failure('GET', r)}")
        if f"sha256:{hashlib.sha256(r.body).hexdigest()}" != descriptor.get("digest"):
            raise ValueError(f"could not fetch layer: {url} does not match its digest")
        return r.body


def read_oci_module(url: str, expected: str, docker_config: bytes | None, timeout: float, limit: int,
                    cached: Callable[[str], bool], insecure: bool = False) -> tuple[str, bytes | None]:
    """(the image digest, the module's bytes; None when `cached(digest)` says the cache has it).
    `expected`: the plugin's `sha256`, checked against the image digest before any layer is read."""
    ref = parse_image_ref(url)
    credentials = find_credentials(docker_config, ref.registry) if docker_config else None
    puller = Puller(ref, credentials, timeout, insecure)
    digest, manifest, media_type = puller.read_manifest()
    if expected and digest != expected:
        raise ValueError(f"sha256 mismatch: the image's digest is {digest}, the plugin expects {expected}")
    if cached(digest):
        return digest, None
    layer = find_wasm_layer(manifest, media_type)
    blob = puller.read_blob(layer.descriptor, limit)
    data = extract_plugin_wasm(blob, limit) if layer.packing == "tar.gz" else blob
    if not detect_wasm_binary(data):
        raise ValueError(f"the module in {ref} ({layer.variant} variant) is not a Wasm binary")
    return digest, data
