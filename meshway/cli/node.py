"""`meshway node`: the node agent (a kubelet for the network-namespace runtime) in the foreground."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import click

from .main import cli

KUBELET_PORT = 10250


def default_root_dir(name: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshway-node" / name


@cli.command()
@click.option("--kubeconfig", default=None, metavar="FILE",
              help="The node's credentials (default: $KUBECONFIG, then ~/.kube/config).")
@click.option("--context", "kube_context", default=None, metavar="NAME", help="The kubeconfig context.")
@click.option("--name", required=True, metavar="node-N",
              help="The Node's name (node-N: its pod CIDR is 10.244.N.0/24, as on the local mesh).")
@click.option("--node-ip", default="127.0.0.1", show_default=True, metavar="IP",
              help="The node's InternalIP: where the API server reaches the kubelet API.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="The kubelet API's port (default: 10250 on node-1, 10250+N-1 on node-N, since the nodes of one "
                   "host share its loopback; 0: any free port; the Node's status names it).")
@click.option("--root-dir", envvar="MESHWAY_STATE_DIR", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The node's state: network namespaces record, pod logs (env MESHWAY_STATE_DIR; "
                   "default: $XDG_STATE_HOME/meshway-node/NAME).")
@click.option("--tls-cert-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The kubelet API's serving certificate (default: one requested from the cluster's "
                   "kubernetes.io/kubelet-serving signer, as the kubelet's serverTLSBootstrap; self-signed "
                   "when that fails).")
@click.option("--tls-private-key-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Its key.")
@click.option("--client-ca-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Who may call the kubelet API: certificates of this CA (default: the kubeconfig's cluster CA).")
@click.option("--xds-address", default=None, metavar="HOST:PORT",
              help="Where waypoint pods reach the control plane (xDS and its CA), in place of their CA_ADDR "
                   "(istiod.istio-system.svc:15012, the istiod Service in a real cluster, which this host cannot "
                   "resolve).")
@click.option("--monitoring-address", default=None, metavar="HOST:PORT",
              help="The control plane's monitoring port (its --metrics-addr): the istiod pod relays its 15014 there "
                   "(`istioctl version` asks it for /version and /debug/syncz). Default: 15014 not served.")
@click.option("--xds-root-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The mesh root (PEM) the control plane's certificate must chain to when waypoint pods get their "
                   "certificates (istiod publishes it as the istio-ca-root-cert ConfigMap).")
@click.option("--network-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The state folder of a network the node agents of one host share (`meshway up --kubernetes` "
                   "makes it): pods reach pods on every node. Default: a network of this node's own.")
@click.option("--nodes", type=click.IntRange(1, 254), default=None,
              help="With --network-dir: how many nodes that network has.")
@click.option("--local", is_flag=True,
              help="Be a node of the one-host mesh in the state folder (--state-dir: its SQLite store, the cluster "
                   "`meshway up` runs) instead of a Kubernetes node: run the pods the store binds to this node, its "
                   "waypoint pods and its node proxy. The Kubernetes options do not apply.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def node(kubeconfig: str | None, kube_context: str | None, name: str, node_ip: str, port: int | None,
         root_dir: Path | None,
         tls_cert_file: Path | None, tls_private_key_file: Path | None, client_ca_file: Path | None,
         xds_address: str | None, monitoring_address: str | None, xds_root_cert: Path | None,
         network_dir: Path | None, nodes: int | None, local: bool, verbose: bool) -> None:
    """Run a node agent: register the Node, run the pods bound to it in network namespaces, serve their logs."""
    if local:
        run_local_node(name, verbose)
        return
    from ..kube.client import KubeClient
    from ..node import plan as P
    from ..node.agent import NodeAgent
    from ..node.server import Authorizer, build_tls_context, serve
    from ..node.tls import fetch_serving_cert
    from ..runtime.netns import detect_capability

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index = P.parse_node_index(name)  # ValueError: one line
    port = KUBELET_PORT + index - 1 if port is None else port
    if (tls_cert_file is None) != (tls_private_key_file is None):
        raise click.UsageError("--tls-cert-file and --tls-private-key-file go together")
    reason = detect_capability()
    if reason:
        raise click.ClickException(f"the node agent needs network namespaces: {reason}")
    root = root_dir or default_root_dir(name)
    client = KubeClient.connect(kubeconfig, kube_context)
    if client_ca_file is None:
        ca = client.api.configuration.ssl_ca_cert
        if not ca:
            raise click.ClickException("the kubeconfig names no cluster CA: pass --client-ca-file")
        client_ca_file = Path(ca)
    if tls_cert_file is None:
        tls_cert_file, tls_private_key_file, _ = fetch_serving_cert(client, root / "pki", name, node_ip)
    for flag, address in (("--xds-address", xds_address), ("--monitoring-address", monitoring_address)):
        if address:
            from ..xds.mtls import parse_address

            try:
                parse_address(address)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=f"'{flag}'") from None
    if (network_dir is None) != (nodes is None):
        raise click.UsageError("--network-dir and --nodes go together")
    if nodes is not None and index > nodes:
        raise click.BadParameter(f"{name} is not one of the network's {nodes} nodes", param_hint="'--name'")
    agent = NodeAgent(client, name, node_ip, root, xds_address=xds_address, xds_root_cert=xds_root_cert,
                      network_dir=network_dir, nodes=nodes, monitoring_address=monitoring_address)
    tls = build_tls_context(tls_cert_file, tls_private_key_file, client_ca_file)  # type: ignore[arg-type]
    server = serve((node_ip, port), tls, agent.find_log, Authorizer(client, name), agent.stop_event,
                   agent.find_target)
    agent.port = server.server_address[1]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    try:
        agent.start()
        click.echo(f"node {name}: kubelet API on https://{node_ip}:{agent.port}, pod CIDR {agent.facts.pod_cidr}",
                   err=True)
        agent.run()
    finally:
        server.shutdown()
        agent.stop()
        agent.shutdown()
        client.close()


def run_local_node(name: str, verbose: bool) -> None:
    """`meshway node --local`: the one-host mesh's node agent (`meshway.runtime.nodeagent`) until
    SIGTERM/SIGINT; what it runs keeps running (a next agent adopts it)."""
    from ..node import plan as P
    from ..runtime.nodeagent import LocalNodeAgent
    from ..runtime.netns import detect_capability
    from .main import Ctx

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        index = P.parse_node_index(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--name'") from None
    reason = detect_capability()
    if reason:
        raise click.ClickException(f"the node agent needs network namespaces and iptables: {reason}")
    from ..store import Store

    ctx = click.get_current_context().find_object(Ctx)
    store = Store(ctx.state_dir if ctx else None)
    if index > store.node_count():
        raise click.BadParameter(f"{name} is not one of the mesh's {store.node_count()} nodes", param_hint="'--name'")
    agent = LocalNodeAgent(store.state_dir, name, store=store)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    click.echo(f"node {name}: the one-host mesh in {store.state_dir}", err=True)
    agent.run()
