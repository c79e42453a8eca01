"""Start-up of the `meshway` command: `--help` and `get` import neither the Envoy protobufs, gRPC,
protobuf nor the models (subcommands are loaded lazily from `LAZY_COMMANDS`), checked in a real
subprocess; and the lazy table says what the modules register."""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshway.cli.main import LAZY_COMMANDS, cli
from meshway.model.registry import KINDS
from meshway.store import Store

DEMO = Path(__file__).resolve().parents[1] / "meshway" / "demo"
# Run `python -m meshway ARGS` in this process (with $LOAD_ALL, after importing every command), then write
# the names of every imported module to $MODULES_OUT.
WRAPPER = """
import importlib, json, os, runpy, sys
sys.argv = ["meshway", *sys.argv[1:]]
if os.environ.get("LOAD_ALL"):  # every command's module imported first, as before lazy loading
    from meshway.cli.main import LAZY_COMMANDS
    for module, _ in LAZY_COMMANDS.values():
        importlib.import_module(f"meshway.cli.{module}")
code = 0
try:
    runpy.run_module("meshway", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code or 0
with open(os.environ["MODULES_OUT"], "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""
FORBIDDEN = ("envoy", "xds", "udpa", "grpc", "google.protobuf", "meshway.xds", "meshway.runtime")
MODELS = ("pydantic", "meshway.model.core", "meshway.model.gateway", "meshway.model.istio", "meshway.model.parse",
          "meshway.mesh")


def run_meshway(tmp_path: Path, *args: str, load_all: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MESHWAY_STATE_DIR", "MESHWAY_DEBUG", "LOAD_ALL")}
    env.update(MODULES_OUT=str(out), COLUMNS="80", **({"LOAD_ALL": "1"} if load_all else {}))
    proc = subprocess.run([sys.executable, "-c", WRAPPER, "--state-dir", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc, json.loads(out.read_text())


def loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


@pytest.fixture
def bootstrapped(tmp_path: Path) -> Path:
    Store(tmp_path / "state").close()  # the first command bootstraps the store, which runs the controllers
    return tmp_path


@pytest.mark.parametrize("args", [("--help",), ("get", "pods"), ("get", "pods", "-A", "-o", "wide"),
                                  ("get", "--help"), ("get", "svc,gtw", "-A")], ids=" ".join)
def test_help_and_get_import_no_protobufs_grpc_or_models(bootstrapped: Path, args: tuple[str, ...]) -> None:
    proc, modules = run_meshway(bootstrapped, *args)
    assert proc.returncode == 0, proc.stderr
    assert loaded(modules, FORBIDDEN) == []
    assert loaded(modules, MODELS) == []


def test_get_pods_of_the_demo_imports_no_protobufs_grpc_or_models(bootstrapped: Path) -> None:
    store = Store(bootstrapped / "state")
    from meshway.model import load_yaml

    for f in sorted(DEMO.glob("*.yaml")):
        store.apply(load_yaml(f.read_text(), f.name))
    store.close()
    proc, modules = run_meshway(bootstrapped, "get", "pods", "-A")
    assert proc.returncode == 0, proc.stderr
    assert "productpage-v1-" in proc.stdout
    assert loaded(modules, FORBIDDEN) == [] and loaded(modules, MODELS) == []


def test_a_lazy_command_is_imported_when_it_runs(bootstrapped: Path) -> None:
    proc, modules = run_meshway(bootstrapped, "proxy-config", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "meshway.cli.proxyconfig" in modules and "meshway.cli.analyze" not in modules
    proc, modules = run_meshway(bootstrapped, "pc", "--help")  # the hidden alias resolves through the table too
    assert proc.returncode == 0 and "listeners" in proc.stdout, proc.stderr
    proc, _ = run_meshway(bootstrapped, "no-such-command")
    assert proc.returncode == 2 and "No such command" in proc.stderr


def test_the_lazy_table_matches_what_the_modules_register() -> None:
    import meshway.cli

    for module in pkgutil.iter_modules(meshway.cli.__path__):  # every module, also one the table does not name
        importlib.import_module(f"meshway.cli.{module.name}")
    main_commands = {name for name, cmd in cli.commands.items() if cmd.callback.__module__ == "meshway.cli.main"}
    assert set(cli.commands) - main_commands == set(LAZY_COMMANDS)  # a new command must be added to the table
    for name, (module, line) in LAZY_COMMANDS.items():
        cmd = cli.commands[name]
        assert cmd.callback.__module__ == f"meshway.cli.{module}", name
        assert cmd.hidden == (line is None), name
        if line is not None:
            assert cmd.get_short_help_str(limit=10**6) == line, name


def test_help_from_the_table_is_the_help_of_the_loaded_commands(bootstrapped: Path) -> None:
    lazy, modules = run_meshway(bootstrapped, "--help")
    everything, all_modules = run_meshway(bootstrapped, "--help", load_all=True)
    assert lazy.returncode == 0 and everything.returncode == 0
    assert "meshway.cli.metrics" not in modules and "meshway.cli.metrics" in all_modules
    assert lazy.stdout == everything.stdout
    assert "proxy-config" in lazy.stdout and "\n  pc " not in lazy.stdout


def test_every_kind_names_its_model_class() -> None:
    for info in KINDS:
        assert info.model.__name__ == info.kind
        assert info.model.__module__ == f"meshway.model.{info.module}"


def test_age_reads_the_stored_timestamp() -> None:
    from datetime import datetime, timezone

    from meshway.cli.printers import age

    now = datetime(2026, 12, 2, 15, 5, 30, tzinfo=timezone.utc)
    assert age({"metadata": {"creationTimestamp": "2026-12-02T15:00:00Z"}}, now) == "5m30s"
    assert age({"metadata": {"creationTimestamp": "2026-11-30T15:05:30Z"}}, now) == "2d"
    assert age({"metadata": {}}, now) == "<unknown>"
