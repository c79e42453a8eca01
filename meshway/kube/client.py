"""The transport to a kube-apiserver: credentials and HTTP from the official `kubernetes` client
(kubeconfig contexts, client certificates, bearer tokens, exec credential plugins, in-cluster
service-account tokens, its urllib3 connection pool). Why that library: it is the Kubernetes
project's own, released with every Kubernetes minor, and reads kubeconfig exactly as kubectl does;
meshway uses only its configuration and transport. Bodies stay plain JSON dicts: nothing is
deserialized into the library's models (10,000 typed pods cost ~640 MB; see
`meshway.kube.project` for what is kept).

`KubeClient` is a thin, synchronous shell: one method per verb the control plane uses (GET, LIST,
WATCH as a stream of events, server-side apply, status writes, DELETE with preconditions). Errors
come back as `ApiError` with the API's `Status` fields, never as strings to parse."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

from ..model.registry import BY_KIND, KindInfo

Body = dict[str, Any]
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (a JSON body is valid YAML)
MERGE_PATCH = "application/merge-patch+json"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@dataclass
class ApiError(Exception):
    """A non-2xx answer: the HTTP status and, when the body is a `Status`, its reason and message."""

    status: int
    reason: str
    message: str
    method: str = ""
    path: str = ""

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.status} {self.reason}: {self.message}".strip()

    @property
    def gone(self) -> bool:  # a watch's resourceVersion is older than etcd keeps: relist
        return self.status == 410

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def parse_error(status: int, data: bytes, method: str = "", path: str = "") -> ApiError:
    """An `ApiError` from a response body: a `Status` object, or whatever text came back."""
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError(int(body.get("code") or status), body.get("reason") or "", body.get("message") or "",
                        method, path)
    return ApiError(status, "", (data or b"").decode("utf-8", "replace")[:500].strip(), method, path)


def resource_path(info: KindInfo, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """`/api/v1/namespaces/default/services/reviews/status`: the URL path of a kind, an object or
    a subresource (`namespace=None` on a namespaced kind: across all namespaces)."""
    base = f"/api/{info.versions[0]}" if not info.group else f"/apis/{info.group}/{info.versions[0]}"
    parts = [base]
    if info.namespaced and namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(info.plural)
    if name:
        parts.append(name)
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


def kind_path(kind: str, namespace: str | None = None, name: str | None = None,
              subresource: str | None = None) -> str:
    return resource_path(BY_KIND[kind], namespace, name, subresource)


def find_kubeconfig(explicit: str | None) -> str | None:
    """The kubeconfig kubectl would use: the flag, then the first file of `$KUBECONFIG`, then
    `~/.kube/config`; None when there is none (in-cluster, or no cluster at all)."""
    if explicit:
        return explicit
    for candidate in (os.environ.get("KUBECONFIG") or "").split(os.pathsep):
        if candidate and Path(candidate).is_file():
            return candidate
    home = Path.home() / ".kube" / "config"
    return str(home) if home.is_file() else None


class KubeClient:
    """One API server, one credential. Thread-safe (the pool is urllib3's)."""

    def __init__(self, api_client) -> None:
        self.api = api_client
        self.host = api_client.configuration.host

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> "KubeClient":
        """From a kubeconfig (see `find_kubeconfig`), else the in-cluster service account."""
        from kubernetes import config  # imported here: `meshway --help` never pays for it

        path = find_kubeconfig(kubeconfig)
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"kubeconfig {path}: no such file")
            return cls(config.new_client_from_config(config_file=path, context=context))
        if not IN_CLUSTER_TOKEN.is_file():
            raise FileNotFoundError("no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a cluster")
        from kubernetes.client import ApiClient, Configuration

        conf = Configuration()
        config.load_incluster_config(client_configuration=conf)
        return cls(ApiClient(conf))

    def close(self) -> None:
        self.api.close()

    # -- the raw exchange ---------------------------------------------------------------------------
    def _send(self, method: str, path: str, query: dict | None, body: Any, content_type: str | None,
              timeout: float | tuple[float, float] | None, stream: bool = False):
        from kubernetes.client.exceptions import ApiException

        url = path + ("?" + urlencode({k: v for k, v in query.items() if v is not None}) if query else "")
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method_, url_, headers_, body_, _ = self.api.param_serialize(
            method, url, header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            resp = self.api.call_api(method_, url_, headers_, body_, _request_timeout=timeout)
        except ApiException as exc:
            raise parse_error(exc.status or 0, (exc.body or "").encode() if isinstance(exc.body, str)
                              else exc.body or b"", method, path) from None
        if not 200 <= resp.status < 300:
            data = resp.read()
            raise parse_error(resp.status, data, method, path)
        return resp if stream else resp.read()

    def request(self, method: str, path: str, query: dict | None = None, body: Any = None,
                content_type: str | None = None, timeout: float = 30.0) -> Body:
        data = self._send(method, path, query, body, content_type, timeout)
        return json.loads(data) if data else {}

    # -- verbs ------------------------------------------------------------------------------------
    def get(self, path: str) -> Body:
        return self.request("GET", path)

    def list(self, path: str, limit: int = 500, **query: Any) -> Iterator[Body]:
        """The pages of a LIST (`limit`/`continue`): each page is a List with metadata.resourceVersion."""
        token = None
        while True:
            page = self.request("GET", path, {**query, "limit": limit, "continue": token}, timeout=120.0)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300,
              bookmarks: bool = True, query: dict | None = None) -> Iterator[Body]:
        """The events of one WATCH from `resource_version` ({type, object}), until the server ends it.
        An ERROR event (e.g. 410 Expired) is raised as `ApiError`."""
        query = {**(query or {}), "watch": "true", "resourceVersion": resource_version,
                 "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true" if bookmarks else None}
        resp = self._send("GET", path, query, None, None, (10.0, timeout_seconds + 30.0), stream=True)
        try:
            buffer = b""
            for chunk in resp.response.stream(64 * 1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(int(status.get("code") or 500), status.get("reason") or "",
                                       status.get("message") or "", "WATCH", path)
                    yield event
        finally:
            resp.response.release_conn()

    def apply(self, path: str, body: Body, field_manager: str, force: bool = True) -> Body:
        """Server-side apply of `body` at `path` (the object's own path, or its /status)."""
        return self.request("PATCH", path, {"fieldManager": field_manager, "force": "true" if force else None},
                            json.dumps(body), APPLY_PATCH)

    def merge_patch(self, path: str, patch: Body) -> Body:
        return self.request("PATCH", path, None, patch, MERGE_PATCH)

    def create(self, path: str, body: Body, field_manager: str | None = None) -> Body:
        return self.request("POST", path, {"fieldManager": field_manager}, body)

    def replace(self, path: str, body: Body, field_manager: str | None = None) -> Body:
        return self.request("PUT", path, {"fieldManager": field_manager}, body)

    def delete(self, path: str, uid: str | None = None, propagation: str | None = None,
               grace_period: int | None = None) -> Body:
        options: Body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period is not None:  # 0: gone at once (a kubelet removing a pod it has stopped)
            options["gracePeriodSeconds"] = grace_period
        if uid:
            options["preconditions"] = {"uid": uid}
        if propagation:
            options["propagationPolicy"] = propagation
        return self.request("DELETE", path, None, options)
