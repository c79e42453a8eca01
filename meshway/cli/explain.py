"""`meshway explain TARGET`: which waypoint serves a destination, and why."""
from __future__ import annotations

import click

from ..mesh.explain import TraversalReport, find_decision, find_peer_mtls, find_traversal
from ..mesh.peer_authentication import MtlsDecision, describe
from ..mesh.selection import Decision
from ..mesh.view import SNAPSHOT_KINDS, MeshView
from . import printers as P
from .liveness import NOT_RUNNING, START_HINT, detect_running, start_hint
from .main import Ctx, cli, namespace_option, pass_ctx


def write_peer_mtls(peer: list[tuple[str, MtlsDecision]]) -> list[str]:
    """`Peer mTLS:` lines: one when every pod has the same mode, else one per pod."""
    if not peer:
        return []
    modes = {describe(m) for _, m in peer}
    if len(modes) == 1:
        return [f"Peer mTLS:    {modes.pop()}"]
    return ["Peer mTLS:"] + [f"  {pod}: {describe(m)}" for pod, m in peer]


def peer_mtls_json(peer: list[tuple[str, MtlsDecision]]) -> list[dict]:
    return [{"pod": pod, "mode": m.mode, "ports": {str(p): mode for p, mode in m.ports},
             "ztunnel_policy": m.policy, "policies": [f"{a.level} {a.key}" for a in m.applied]} for pod, m in peer]


def _pods_by_guard(guards: tuple) -> list[tuple[tuple, list[str]]]:
    groups: dict[tuple, list[str]] = {}
    for pod, g in guards:
        groups.setdefault((g.port, g.waypoints), []).append(pod)
    return sorted(groups.items())


def write_traversal(report: TraversalReport | None) -> list[str]:
    """`Traversal:` and what node proxies refuse (or, optional, what bypasses the waypoint as in Istio)."""
    if report is None:
        return []
    t = report.traversal
    if t is None:  # a pod behind a required service
        lines = ["Traversal:    required (by its services)"]
    else:
        lines = [f"Traversal:    {t.mode} ({t.source})"]
        if t.note:
            lines.append(f"  note:       {t.note}")
        if not t.enforced:
            if report.bound:
                lines.append("  bypasses:   as in Istio: pod-IP clients, clients outside the mesh, connections opened "
                             "before the binding, all traffic while the waypoint is missing or not ready")
            return lines
        if t.refused:
            lines.append(f"  refused:    every connection to the service from the mesh: {t.why} ({t.refused})")
    for (port, waypoints), pods in _pods_by_guard(report.guards):
        admitted = f"except from waypoint {', '.join(waypoints)}" if waypoints else "from every identity"
        lines.append(f"  refused:    HBONE to {', '.join(pods)} port {port} {admitted} (clients addressing the pod IP)")
        lines.append(f"  refused:    plaintext to {', '.join(pods)} port {port} (clients outside the mesh)")
    for (port, waypoints), pods in _pods_by_guard(report.outside):
        admitted = f"except from the pods of waypoint {', '.join(waypoints)}" if waypoints else "from everyone"
        lines.append(f"  refused:    TCP to {', '.join(pods)} port {port} {admitted} (outside the mesh: "
                     "the pod's own packet filter)")
    if report.guards or report.outside:
        lines.append("  closed:     connections opened before the binding, by the pods' node agents within seconds")
    return lines


def write_decision(decision: Decision, live: bool = True, hint: str = START_HINT,
                   peer: list[tuple[str, MtlsDecision]] = (), traversal: TraversalReport | None = None) -> str:
    """`live`: the control plane runs; else a recorded "ready" is shown as unknown (see `liveness`);
    `hint`: how to start it; `peer`: the PeerAuthentication of the mesh pods behind it; `traversal`:
    its guaranteed-traversal mode and what node proxies refuse for it."""
    d = decision.destination
    what = f"{d.kind.lower()}/{d.name}"
    waypoint = decision.waypoint or "<none>"
    if decision.waypoint:
        if decision.ready and not live:
            waypoint += f" (readiness Unknown: {NOT_RUNNING}; last recorded: ready)"
        else:
            waypoint += " (ready)" if decision.ready else " (not ready)"
    lines = [f"Destination:  {what} in namespace {d.namespace}" + (f" ({d.address})" if d.address else ""),
             f"Addressed as: {decision.addressed_as}",
             f"Waypoint:     {waypoint}",
             f"Reason:       {decision.reason}",
             *write_peer_mtls(list(peer)),
             *write_traversal(traversal),
             "Rules:"]
    stale = bool(decision.waypoint and decision.ready and not live)
    rules = [rule.removesuffix(" is ready") + " was ready when last recorded" if stale and rule.endswith(" is ready")
             else rule for rule in decision.rules]
    lines += [f"  {i}. {rule}" for i, rule in enumerate(rules, 1)]
    explanation = decision.explanation
    t = traversal.traversal if traversal else None
    if t is not None and t.refused:  # the selection's "goes directly" does not happen
        explanation = (f"Traffic addressed to {what} is refused: {t.why}, and {t.source.removeprefix('label ')} "
                       "forbids the direct path.")
    lines.append(f"As last recorded: {explanation}" if stale else explanation)
    if stale:
        lines.append(f"Note: {NOT_RUNNING} ({hint}): the waypoint's readiness is the last recorded "
                     "state, not live.")
    return "\n".join(lines) + "\n"


def decision_json(decision: Decision, live: bool = True, peer: list[tuple[str, MtlsDecision]] = (),
                  traversal: TraversalReport | None = None) -> dict:
    """`ready` is null (unknown) when only a stopped control plane recorded it as ready."""
    out = decision.to_json()
    if peer:
        out["peer_mtls"] = peer_mtls_json(list(peer))
    if traversal:
        out["traversal"] = traversal.to_json()
    if decision.waypoint and decision.ready and not live:
        out["ready"] = None
    out["control_plane"] = "running" if live else "not running"
    return out


@cli.command()
@click.argument("target", required=False)
@namespace_option
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="The decision as text, or as JSON (keys destination, addressed_as, waypoint, ready, reason, "
                   "rules, explanation, control_plane; peer_mtls when a PeerAuthentication applies; traversal when "
                   "the destination asks for a waypoint or meshway.io/waypoint-traversal applies); with "
                   "--request the simulation's steps (keys request, caller, resolution, node_proxy, waypoint, "
                   "outcome).")
@click.option("--request", "request_text", metavar="'[METHOD] http://HOST[:PORT]/PATH [-H NAME: VALUE]...'",
              help="Simulate this request (nothing is sent): what the node proxies and the waypoint do with it.")
@click.option("--from", "source", metavar="deploy/NAME|pod/NAME", help="The pod the simulated request comes from.")
@pass_ctx
def explain(c: Ctx, target: str | None, namespace: str | None, output: str, request_text: str | None,
            source: str | None) -> None:
    """Why traffic to TARGET does (not) go through a waypoint; or, with --request and --from, what
    happens to one request, step by step, without sending it.

    TARGET: service/NAME, pod/NAME, serviceentry/NAME, or IP[:PORT] (a service VIP or pod IP).
    """
    if request_text is not None or source is not None:
        _explain_request(c, target, namespace or "default", output, request_text, source)
        return
    if target is None:
        raise click.UsageError("TARGET is required (or --request with --from)")
    _, snapshot = c.store.snapshot(SNAPSHOT_KINDS + ("PeerAuthentication",))
    view = MeshView.build(snapshot)
    decision = find_decision(view, target, namespace or "default")
    peer = find_peer_mtls(view, decision)
    traversal = find_traversal(view, decision)
    live = detect_running(c.store)
    click.echo(P.to_json(decision_json(decision, live, peer, traversal)) if output == "json"
               else write_decision(decision, live, start_hint(c.store), peer, traversal), nl=False)


def _explain_request(c: Ctx, target: str | None, namespace: str, output: str, request_text: str | None,
                     source: str | None) -> None:
    from .explain_request import RequestError, SourceNotFound, run, write_simulation
    if target is not None:
        raise click.UsageError("give either TARGET or --request, not both")
    if not request_text or not source:
        raise click.UsageError("--request and --from go together")
    try:
        doc = run(c, request_text, source, namespace)
    except (RequestError, SourceNotFound) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(P.to_json(doc) if output == "json" else write_simulation(doc), nl=False)
