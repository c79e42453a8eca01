"""A read-only Kubernetes API server in a thread, for kubectl to read given objects from: just the
discovery documents and GET of a collection or one object of the served kinds. With it the real
`kubectl get` renders its output formats (-o jsonpath, custom-columns, --sort-by) on objects we choose,
without etcd or kube-apiserver."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Body = dict[str, Any]

RESOURCES = {"Pod": ("pods", "po"), "Service": ("services", "svc"), "ConfigMap": ("configmaps", "cm")}


class FakeAPIServer:
    """Serves `objects` (core/v1 kinds of RESOURCES) at http://127.0.0.1:PORT; a context manager."""

    def __init__(self, objects: list[Body]):
        self.objects = objects
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeAPIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def respond(self, path: str) -> Body | None:
        parts = path.strip("/").split("/")
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        if parts == ["api", "v1"]:
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
                 "verbs": ["get", "list"], "shortNames": [short]} for kind, (plural, short) in RESOURCES.items()]}
        if len(parts) in (5, 6) and parts[:3] == ["api", "v1", "namespaces"]:
            kind = next((k for k, (plural, _) in RESOURCES.items() if plural == parts[4]), None)
            found = [o for o in self.objects if o["kind"] == kind
                     and o["metadata"].get("namespace", "default") == parts[3]]
            if len(parts) == 5:
                return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": ""},
                        "items": found}
            return next((o for o in found if o["metadata"]["name"] == parts[5]), None)
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = fake.respond(self.path.partition("?")[0])
                status = 200 if body is not None else 404
                if body is None:
                    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                            "code": 404, "message": f"{self.path} not found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
