"""The `meshway` command: kubectl-shaped resource commands plus istioctl-shaped mesh commands.

Commands gather data from the store and the pure mesh functions; `printers` renders it. The resource
commands live here; every other command's module is imported only when that command runs (or its own
help is asked for), so that `meshway --help` and `meshway get` load neither the Envoy protobufs, gRPC
nor the models (see LAZY_COMMANDS; tests/test_cli_startup.py checks it, benchmarks/cli_startup.py
measures it).
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..model import InputError, KindInfo, UnknownKind, find_kind
from ..store import Store, StoreError
from ..store.db import Expired
from . import printers as P
from .backend import EMBEDDED, KUBE_OPTION_NAMES, Backend, choose_backend

if TYPE_CHECKING:
    from ..model.meta import LabelSelector
    from ..model.parse import Manifest

# Commands defined in other modules of this package: name -> (module, the line `meshway --help` lists;
# None for a hidden alias). The module registers the command on `cli` when imported. A test checks this
# table against the modules (every command listed, the same help line).
LAZY_COMMANDS: dict[str, tuple[str, str | None]] = {
    "analyze": ("analyze", "Analyze the mesh's configuration."),
    "controlplane": ("controlplane", "Run the control plane in the foreground: store watch, translation, ADS/SDS, "
                                     "status (and, on loopback, the waypoint replicas)."),
    "down": ("up", "Stop the node agents, the control plane and every pod and proxy they run."),
    "exec": ("clustercmds", "Run a command inside a pod's network namespace: exec POD|deploy/NAME -- CMD [ARGS...]."),
    "explain": ("explain", "Why traffic to TARGET does (not) go through a waypoint; or, with --request and --from, "
                           "what happens to one request, step by step, without sending it."),
    "install": ("install", "Install the Gateway API and Istio CRDs, the istio-waypoint GatewayClass and meshway's "
                           "RBAC."),
    "logs": ("clustercmds", "Print a pod's logs: logs POD|deploy/NAME [-c CONTAINER] [-f]; node proxies: logs -n "
                            "istio-system ds/ztunnel|ztunnel-node-N."),
    "metrics": ("metrics", "Istio metrics from the proxies' own counters: requests, errors and latency per "
                           "destination service and version, TCP connections and bytes."),
    "node": ("node", "Run a node agent: register the Node, run the pods bound to it in network namespaces, serve "
                     "their logs."),
    "pc": ("proxyconfig", None),
    "port-forward": ("clustercmds", "Forward 127.0.0.1:LOCAL on the host to a pod of svc/NAME (or a pod) on PORT: "
                                    "port-forward svc/NAME LOCAL:PORT."),
    "proxy-config": ("proxyconfig", "A proxy's listeners, clusters, routes, endpoints and secrets (alias: pc)."),
    "proxy-status": ("controlplane", "Each proxy's xDS state: SYNCED, STALE (sent, not yet ACKed), NACKED (with "
                                     "Envoy's message)."),
    "status": ("clustercmds", "Nodes, pods, waypoints and proxy sync of the local mesh."),
    "uninstall": ("install", "Delete what `meshway install` created (the CRDs with every object of their kinds)."),
    "up": ("up", "Start the mesh: control plane, network-namespace cluster, node proxies, waypoints, and the bundled "
                 "demo (bookinfo, a namespace waypoint, the reviews 90/10 split) or -f manifests."),
    "version": ("version", "Client, control plane and data plane (proxy) versions."),
    "waypoint": ("waypoint", "Manage waypoint configuration."),
    "zc": ("ztunnelconfig", None),
    "ztunnel-config": ("ztunnelconfig", "What a node proxy (ztunnel) holds: workloads, services, policies, "
                                        "certificates (alias: zc)."),
}


class LazyGroup(click.Group):
    """click's lazy-loading group: a command of LAZY_COMMANDS is imported when it is resolved, and
    listed in the help from the table without importing it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            importlib.import_module(f"{__package__}.{LAZY_COMMANDS[cmd_name][0]}")
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, with a stand-in (the table's line as its help) for a command not imported."""
        commands = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None:
                line = LAZY_COMMANDS[name][1]
                cmd = click.Command(name, help=line, hidden=line is None)
            if not cmd.hidden:
                commands.append((name, cmd))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in commands])


class MeshwayGroup(LazyGroup):
    """Turns every expected failure into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (InputError, UnknownKind, ValueError, LookupError, Expired) as exc:
            msg = str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc)
            click.echo(f"error: {msg}", err=True)
            ctx.exit(1)
        except StoreError as exc:
            click.echo(str(exc), err=True)
            ctx.exit(1)
        except TimeoutError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # `meshway get ... | head`: the reader went away
            os._exit(0)
        except Exception as exc:  # a bug: one line, the traceback only on request
            if os.environ.get("MESHWAY_DEBUG"):
                raise
            if isinstance(exc, OSError) and exc.filename:  # the machine refused a file operation: path and cause
                click.echo(f"error: {exc.filename}: {exc.strerror or exc}", err=True)
                ctx.exit(1)
            click.echo(f"error: internal error ({type(exc).__name__}: {exc}); rerun with MESHWAY_DEBUG=1 for "
                       "the traceback", err=True)
            ctx.exit(2)


class Ctx:
    def __init__(self, state_dir: str | None, backend: Backend = EMBEDDED):
        self.state_dir = state_dir
        self.backend = backend
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """The embedded store, or with --kubeconfig/$KUBECONFIG (see `backend`) the Kubernetes API's
        `KubeStore`, which has the part of Store's interface the resource and mesh commands use."""
        if self._store is None:
            if self.backend.kubernetes:
                from ..kube.store import KubeStore

                store = KubeStore.connect(self.backend.kubeconfig, self.backend.context)
                self._store = store  # type: ignore[assignment]
            else:
                self._store = Store(self.state_dir)
        return self._store


pass_ctx = click.make_pass_decorator(Ctx)
namespace_option = click.option("-n", "--namespace", default=None, help="Namespace (default: default).")


@click.group(cls=MeshwayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", envvar="MESHWAY_STATE_DIR", default=None, metavar="DIR",
              help="Folder of the embedded store (env MESHWAY_STATE_DIR; default $XDG_STATE_HOME/meshway).")
@click.option("--kubeconfig", default=None, metavar="FILE",
              help="Work on this Kubernetes API server instead of the embedded store (also $KUBECONFIG when "
                   "neither --state-dir nor MESHWAY_STATE_DIR is given).")
@click.option("--context", "kube_context", default=None, metavar="NAME", help="The kubeconfig context to use.")
@click.version_option(package_name="meshway")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, kubeconfig: str | None, kube_context: str | None) -> None:
    """meshway: Istio ambient waypoints in Python. kubectl-style resource commands (apply, get, label,
    delete) and istioctl-style mesh commands (waypoint, explain, analyze)."""
    source = ctx.get_parameter_source("state_dir")
    backend = choose_backend(kubeconfig, kube_context, source == click.core.ParameterSource.COMMANDLINE,
                             source == click.core.ParameterSource.ENVIRONMENT, os.environ.get("KUBECONFIG"),
                             ctx.invoked_subcommand)
    if backend.kubernetes and ctx.invoked_subcommand in KUBE_OPTION_NAMES:  # their own options' defaults
        names = KUBE_OPTION_NAMES[ctx.invoked_subcommand]
        ctx.default_map = {ctx.invoked_subcommand: {names[0]: kubeconfig, names[1]: kube_context}}
    ctx.obj = Ctx(state_dir, backend)


def find_manifest_files(name: str) -> list[Path]:
    """A file, or a folder's *.yaml, *.yml and *.json files (sorted); InputError when missing."""
    path = Path(name)
    try:
        if path.is_dir():
            return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    except OSError as exc:
        raise InputError(name, f"cannot read: {exc.strerror or exc}") from None
    if not path.exists():
        raise InputError(name, "the path does not exist")
    return [path]


def read_manifests(files: tuple[str, ...], namespace: str | None) -> list[Manifest]:
    """Every document of every file (a folder means its *.yaml, *.yml and *.json files, sorted)."""
    from ..model.parse import load_yaml

    manifests: list[Manifest] = []
    for name in files:
        if name == "-":
            manifests += load_yaml(sys.stdin.buffer.read(), "<stdin>", namespace)
            continue
        for p in find_manifest_files(name):
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise InputError(str(p), f"cannot read: {exc.strerror or exc}") from None
            manifests += load_yaml(data, str(p), namespace)
    if not manifests:
        raise InputError(", ".join(files), "no objects passed to apply")
    return manifests


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-",
              help="File, folder (its *.yaml, *.yml, *.json) or - for stdin; repeatable.")
@namespace_option
@pass_ctx
def apply(c: Ctx, files: tuple[str, ...], namespace: str | None) -> None:
    """Create or update resources from YAML (all documents, all or nothing)."""
    manifests = read_manifests(files, namespace)
    for result in c.store.apply(manifests):
        click.echo(str(result))


def parse_selector(text: str) -> LabelSelector:
    from ..model.selectors import parse_selector as parse

    return parse(text)


def _split_kind_names(args: tuple[str, ...]) -> tuple[KindInfo, list[str]]:
    if not args:
        raise ValueError("You must specify the type of resource to get. Use \"meshway get -h\" for the kinds")
    first = args[0]
    if "/" in first:
        kind, _, name = first.partition("/")
        return find_kind(kind), [name] + [a.partition("/")[2] for a in args[1:]]
    return find_kind(first), list(args[1:])


OUTPUT_FORMATS = ("custom-columns", "custom-columns-file", "json", "jsonpath", "jsonpath-as-json", "jsonpath-file",
                  "name", "wide", "yaml")


def check_output(value: str | None) -> None:
    """-o FORMAT or -o FORMAT=ARG, as kubectl accepts them (the template is checked when it is used)."""
    fmt, sep, _ = (value or "wide").partition("=")
    if fmt not in OUTPUT_FORMATS or (sep and fmt in ("json", "name", "wide", "yaml")):
        raise ValueError(f"unable to match a printer suitable for the output format \"{value}\", allowed formats are: "
                         f"{','.join(OUTPUT_FORMATS)}")


def _read_template(fmt: str, arg: str) -> str:
    if not arg:
        what = "custom-columns format specified but no custom columns given" if fmt == "custom-columns" \
            else "template format specified but no template given"
        raise ValueError(what)
    if not fmt.endswith("-file"):
        return arg
    try:
        return Path(arg).read_text()
    except OSError as exc:
        raise ValueError(f"error reading --template {arg}, {exc.strerror or exc}") from None


def write_objects(data: P.Body, output: str, allow_missing_keys: bool) -> str:
    """-o yaml|json|jsonpath*|custom-columns* of one object or a List."""
    fmt, _, arg = output.partition("=")
    if fmt == "yaml":
        return P.to_yaml(data)
    if fmt == "json":
        return P.to_json(data)
    template = _read_template(fmt, arg)
    if fmt.startswith("custom-columns"):
        columns = P.parse_custom_columns(template) if fmt == "custom-columns" else P.parse_custom_columns_file(template)
        return P.write_custom_columns(columns, data)
    from .jsonpath import render

    return render(template, data, allow_missing=allow_missing_keys, as_json=fmt == "jsonpath-as-json")


def _sorted(items: list[P.Body], sort_by: str | None) -> list[P.Body]:
    if not sort_by or not items:
        return items
    from .sortby import sort_items

    return sort_items(items, sort_by)


@cli.command()
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option("-o", "--output", default=None, metavar="FORMAT",
              help="wide: more columns; yaml/json: the objects (a List when not one named object); name: KIND/NAME; "
                   "jsonpath=TEMPLATE, jsonpath-as-json=TEMPLATE, jsonpath-file=FILE: kubectl's JSONPath template "
                   "of that object or List; custom-columns=HEADER:PATH,..., custom-columns-file=FILE: a table.")
@click.option("-L", "--label-columns", multiple=True, help="Label keys to show as columns (comma-separated).")
@click.option("-l", "--selector", default=None, help="Label selector, e.g. app=reviews,version!=v1.")
@click.option("--show-labels", is_flag=True, help="Show all labels as the last column (table output).")
@click.option("--sort-by", default=None, metavar="JSONPATH",
              help="Sort the list by this field, e.g. .metadata.name or '{.metadata.creationTimestamp}'.")
@click.option("--allow-missing-template-keys", type=click.BOOL, default=True, is_flag=False, flag_value=True,
              metavar="BOOL", help="jsonpath: a key missing in the object prints nothing (default) or, with false, "
                                   "is an error.")
@pass_ctx
def get(c: Ctx, args: tuple[str, ...], namespace: str | None, all_namespaces: bool, output: str | None,
        label_columns: tuple[str, ...], selector: str | None, show_labels: bool, sort_by: str | None,
        allow_missing_template_keys: bool) -> None:
    """Show resources: get KIND[,KIND...] [NAME...]."""
    check_output(output)
    objects_format = output is not None and output not in ("wide", "name")
    if "," in args[0] and "/" not in args[0]:
        if len(args) > 1:
            raise ValueError("names cannot be given with more than one kind")
        ns = None if all_namespaces else (namespace or "default")
        found = [(info, c.store.list(info, ns, parse_selector(selector) if selector else None))
                 for info in (find_kind(k) for k in args[0].split(",") if k)]
        if objects_format:  # one List of every kind's objects, as kubectl prints it
            data = P.as_list([b for _, items in found for b in items])
            data["items"] = _sorted(data["items"], sort_by)
            click.echo(write_objects(data, output, allow_missing_template_keys), nl=False)
            return
        first = True
        for info, items in found:
            items = _sorted(items, sort_by)
            if items and output == "name":
                click.echo("".join(f"{info.qualified}/{b['metadata']['name']}\n" for b in items), nl=False)
            elif items:
                table = P.write_table(info.kind, items, all_namespaces and info.namespaced, output == "wide", [],
                                      prefix=info.qualified, show_labels=show_labels)
                click.echo(("" if first else "\n") + table, nl=False)
            first = first and not items
        if first:
            click.echo(f"No resources found{'' if all_namespaces else f' in {ns} namespace'}.", err=True)
        return
    info, names = _split_kind_names(args)
    ns = None if all_namespaces and not names else (namespace or "default")
    sel = parse_selector(selector) if selector else None
    items = [c.store.get(info, ns or "default", n) for n in names] if names else c.store.list(info, ns, sel)
    if not items and not objects_format:
        where = f" in {ns} namespace" if info.namespaced and ns else ""
        click.echo(f"No resources found{where}.", err=True)
        return
    if objects_format:  # none: an empty List, as kubectl prints it
        data = items[0] if len(names) == 1 else P.as_list(items)
        if len(names) != 1:
            data["items"] = _sorted(data["items"], sort_by)
        click.echo(write_objects(data, output, allow_missing_template_keys), nl=False)
        return
    items = _sorted(items, sort_by)
    if output == "name":
        for b in items:
            click.echo(f"{info.qualified}/{b['metadata']['name']}")
    else:
        keys = [k for arg in label_columns for k in arg.split(",") if k]
        click.echo(P.write_table(info.kind, items, all_namespaces and info.namespaced and not names,
                                 output == "wide", keys, show_labels=show_labels), nl=False)


def _split_label_args(args: tuple[str, ...]) -> tuple[list[str], dict[str, str], list[str]]:
    names, set_labels, remove = [], {}, []
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            set_labels[key] = value
        elif arg.endswith("-") and len(arg) > 1:
            remove.append(arg[:-1])
        elif set_labels or remove:
            raise ValueError(f"all resources must be specified before label changes: {arg}")
        else:
            names.append(arg)
    if not set_labels and not remove:
        raise ValueError("at least one label update is required")
    return names, set_labels, remove


@cli.command()
@click.argument("args", nargs=-1, required=True)
@namespace_option
@click.option("-l", "--selector", default=None, help="Label the objects that match this selector.")
@click.option("--all", "all_", is_flag=True, help="Label every object of the kind in the namespace.")
@click.option("--overwrite", is_flag=True, help="Allow changing the value of an existing label.")
@pass_ctx
def label(c: Ctx, args: tuple[str, ...], namespace: str | None, selector: str | None, all_: bool,
          overwrite: bool) -> None:
    """Update labels: label KIND NAME... KEY=VALUE... KEY-... (kubectl semantics)."""
    info, names = _split_kind_names(args[:1])
    more, set_labels, remove = _split_label_args(args[1:])
    names += more
    if not names and selector is None and not all_:
        raise ValueError("resource(s) were provided, but no name was specified")
    sel = parse_selector(selector) if selector else (parse_selector("") if all_ else None)
    results = c.store.label(info, namespace or "default", names, sel, set_labels, remove, overwrite)
    if not results and sel is not None:
        click.echo(f"No resources found in {namespace or 'default'} namespace.", err=True)
    for result in results:
        click.echo(str(result))


@cli.command()
@click.argument("args", nargs=-1, required=True)
@click.option("--replicas", type=int, required=True, help="The new number of replicas.")
@namespace_option
@pass_ctx
def scale(c: Ctx, args: tuple[str, ...], replicas: int, namespace: str | None) -> None:
    """Set a Deployment's replicas: scale deploy/NAME --replicas N (kubectl semantics; a waypoint's
    Deployment keeps them unless its Gateway sets meshway.io/replicas)."""
    info, names = _split_kind_names(args)
    if not names:
        raise ValueError("resource(s) were provided, but no name was specified")
    for name in names:
        click.echo(str(c.store.scale(info, namespace or "default", name, replicas)))


@cli.command()
@click.argument("args", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE|DIR|-",
              help="Delete the objects these files define (instead of KIND NAME...).")
@namespace_option
@click.option("--ignore-not-found", is_flag=True, help="An object that does not exist is not an error.")
@pass_ctx
def delete(c: Ctx, args: tuple[str, ...], files: tuple[str, ...], namespace: str | None,
           ignore_not_found: bool) -> None:
    """Delete resources: delete KIND NAME... | -f FILE."""
    if files:
        targets = [(m.info, m.obj.namespace, m.obj.name) for m in read_manifests(files, namespace)]
    else:
        info, names = _split_kind_names(args)
        if not names:
            raise ValueError("resource(s) were provided, but no name was specified")
        targets = [(info, namespace or "default", n) for n in names]
    for result in c.store.delete(targets, ignore_not_found):
        click.echo(f'{result.info.qualified} "{result.name}" deleted')


def main() -> None:
    cli(prog_name="meshway")


if __name__ == "__main__":
    main()
