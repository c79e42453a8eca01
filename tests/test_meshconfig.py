"""MeshConfig from ConfigMap istio/istio-system: typed extension providers, refused when invalid."""
from __future__ import annotations

import pytest

from meshway.mesh.meshconfig import find_mesh_config
from meshway.mesh.view import MeshView
from meshway.model import InputError, load_yaml

MESH = """
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    enableTracing: true
    defaultConfig: {discoveryAddress: istiod.istio-system.svc:15012}
    extensionProviders:
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
    - name: ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
    - name: dd
      datadog: {service: datadog-agent.default.svc.cluster.local, port: 8126}
"""


def view_of(text: str) -> MeshView:
    return MeshView.build({"ConfigMap": [m.body for m in load_yaml(text, "mesh.yaml")]})


def test_extension_providers_are_typed() -> None:
    mesh = find_mesh_config(view_of(MESH))
    assert [(p.name, p.type) for p in mesh.extensionProviders] == [
        ("zipkin", "zipkin"), ("ext-authz-http", "envoyExtAuthzHttp"), ("dd", "datadog")]
    assert mesh.provider("ext-authz-http").envoyExtAuthzHttp.includeRequestHeadersInCheck == ["x-ext-authz"]
    assert mesh.provider("missing") is None


def test_other_configmaps_are_not_mesh_config() -> None:
    view = view_of(MESH.replace("name: istio,", "name: other,"))
    assert view.config.get("ConfigMap") == ()
    assert find_mesh_config(view).extensionProviders is None


@pytest.mark.parametrize("mesh, expected", [
    ("extensionProviders:\n    - name: z\n      zipkin: {service: z, port: 99999}",
     "data.mesh: extensionProviders.0.zipkin.port"),
    ("extensionProviders:\n    - name: z", "must set exactly one provider type"),
    ("extensionProviders:\n    - {name: z, zipkin: {service: a, port: 1}}\n    - {name: z, zipkin: {service: b, port: 2}}",
     "duplicate provider names ['z']"),
    ("[1, 2]", "data.mesh: expected a mapping"),
])
def test_invalid_mesh_config_is_refused_with_its_path(mesh: str, expected: str) -> None:
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |-\n    {mesh}\n"
    with pytest.raises(InputError) as err:
        load_yaml(text, "mesh.yaml")
    assert expected in str(err.value)
    assert "mesh.yaml" in str(err.value)
