"""`meshway version`: the client's, the running control plane's (run/version.json, written when it
starts) and each proxy's (its Envoy's GET /server_info) versions, printed as `istioctl version`
prints them (`pkg/version/cobra.go`: `client version: X`, `control plane version: X`,
`data plane version: X (N proxies)`; -o json|yaml: clientVersion, meshVersion, dataPlaneVersion).
Writers are pure; the command gathers."""
from __future__ import annotations

import json
from typing import Any

import click

from . import printers as P
from .main import Ctx, cli, pass_ctx

Body = dict[str, Any]


# -- pure ----------------------------------------------------------------------------------------
def parse_envoy_version(server_info: Body) -> str:
    """`envoy-1.40.0` from /server_info's `version` (`SHA/1.40.0/Clean/RELEASE/BoringSSL`)."""
    parts = str(server_info.get("version", "")).split("/")
    return f"envoy-{parts[1]}" if len(parts) > 1 and parts[1] else "unknown"


def build_version(client: Body, control_plane: Body | None, proxies: list[Body] | None) -> Body:
    """istioctl's `Version`: clientVersion (BuildInfo), meshVersion ([{Component, Revision, Info}]),
    dataPlaneVersion ([{ID, IstioVersion, Type}]); absent parts are left out."""
    out: Body = {"clientVersion": client}
    if control_plane is not None:
        out["meshVersion"] = [{"Component": "pilot", "Revision": "default", "Info": control_plane}]
    if proxies is not None:
        out["dataPlaneVersion"] = proxies
    return out


def render_proxy_versions(proxies: list[Body]) -> str:
    """`envoy-1.40.0 (3 proxies)`, one group per version, sorted (istioctl's renderProxyVersions)."""
    if not proxies:
        return "none"
    groups: dict[str, int] = {}
    for p in proxies:
        groups[p["IstioVersion"]] = groups.get(p["IstioVersion"], 0) + 1
    return ", ".join(f"{v} ({n} proxies)" for v, n in sorted(groups.items()))


def _long_form(info: Body) -> str:
    return (f'version.BuildInfo{{Version:"{info.get("version", "")}", GitRevision:"{info.get("revision", "")}", '
            f'PythonVersion:"{info.get("python_version", "")}", BuildStatus:"{info.get("status", "")}", '
            f'GitTag:"{info.get("tag", "")}"}}')


def write_version(version: Body, output: str = "short", short: bool = True) -> str:
    """The text `istioctl version` prints (short by default, --short=false the long form), or JSON
    (indent 2) / YAML of the whole `Version`."""
    if output == "json":
        return json.dumps(version, indent=2) + "\n"
    if output == "yaml":
        return P.to_yaml(version)
    client, mesh, proxies = version["clientVersion"], version.get("meshVersion"), version.get("dataPlaneVersion")
    lines = []
    if short:
        if mesh is None:
            lines.append(client["version"])
        else:
            lines.append(f"client version: {client['version']}")
            if len({m['Info']['version'] for m in mesh}) == 1:  # coalesceVersions
                lines.append(f"control plane version: {mesh[0]['Info']['version']}")
            else:
                lines += [f"{m['Component']} version: {m['Info']['version']}" for m in mesh]
        if proxies is not None:
            lines.append(f"data plane version: {render_proxy_versions(proxies)}")
    else:
        if mesh is None:
            lines.append(_long_form(client))
        else:
            lines.append(f"client version: {_long_form(client)}")
            lines += [f"{m['Component']} version: {_long_form(m['Info'])}" for m in mesh]
        for p in proxies or []:
            lines.append(f'data plane version: version.ProxyInfo{{ID:"{p["ID"]}", IstioVersion:"{p["IstioVersion"]}", '
                         f'Type:"{p["Type"]}"}}')
    return "".join(f"{line}\n" for line in lines)


# -- gathering -----------------------------------------------------------------------------------
UNKNOWN_BUILD = {"version": "unknown", "revision": "unknown", "python_version": "", "status": "", "tag": ""}


def fetch_control_plane_version(c: Ctx) -> Body | None:
    """The running control plane's BuildInfo (run/version.json; a control plane started before that
    file existed: the version it writes per proxy in proxy-status.json), None when none runs."""
    from .controlplane import load_proxy_status
    from .liveness import detect_running, find_controlplane

    if c.backend.kubernetes:  # a control plane holds the Lease; its build is not published on the API
        return UNKNOWN_BUILD if detect_running(c.store) else None
    if not find_controlplane(c.store.state_dir):
        return None
    path = c.store.state_dir / "run" / "version.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        versions = sorted({p.get("version", "") for p in load_proxy_status(c).values()} - {""})
        return {"version": versions[0] if versions else "unknown", "revision": "unknown", "python_version": "",
                "status": "", "tag": versions[0] if versions else ""}


def fetch_proxy_versions(c: Ctx) -> list[Body]:
    """Every proxy of proxy-status.json with its Envoy's version (`unreachable` when its admin
    socket does not answer)."""
    from ..runtime.envoy_admin import AdminError, fetch_admin
    from .controlplane import load_proxy_status

    if c.backend.kubernetes:  # proxies run as pods elsewhere: their admin APIs are not reachable from here
        return []
    out = []
    for proxy in sorted(load_proxy_status(c).values(), key=lambda p: (p["namespace"], p["pod"])):
        try:
            version = parse_envoy_version(json.loads(fetch_admin(proxy["admin"], "/server_info", timeout=2.0)))
        except (AdminError, ValueError):
            version = "unreachable"
        out.append({"ID": f"{proxy['pod']}.{proxy['namespace']}", "IstioVersion": version,
                    "Type": proxy.get("type", "")})
    return out


@cli.command("version")
@click.option("--remote", type=click.BOOL, default=True, is_flag=False, flag_value=True, show_default=True,
              metavar="[=true|false]", help="Also the control plane's and the proxies' versions (--remote=false: "
                                            "the client's only).")
@click.option("-s", "--short", type=click.BOOL, default=True, is_flag=False, flag_value=True, show_default=True,
              metavar="[=true|false]", help="--short=false: the full build information.")
@click.option("-o", "--output", type=click.Choice(["short", "json", "yaml"]), default="short", show_default=True,
              help="Text, or the whole version information as JSON/YAML.")
@pass_ctx
def version(c: Ctx, remote: bool, short: bool, output: str) -> None:
    """Client, control plane and data plane (proxy) versions."""
    from ..buildinfo import build_version_info

    control_plane = proxies = None
    if remote:
        control_plane = fetch_control_plane_version(c)
        if control_plane is None:  # as istioctl when it cannot reach istiod: said, then the client's version
            click.echo("error: the control plane is not running (`meshway up` starts it)", err=True)
        proxies = fetch_proxy_versions(c) if control_plane is not None else None
    click.echo(write_version(build_version(build_version_info(), control_plane, proxies), output, short), nl=False)
