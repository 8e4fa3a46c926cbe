"""The package layout holds: import rules read from the source (AST), cheap imports, one config error line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ROOT

ROOMS = ("live", "control", "jobs", "observe", "cluster", "recordings")
# The app state every room may read (server/keys.py); everything else is some room's own.
CORE_KEYS = {"CONFIG", "TOPOLOGY", "DB", "ENGINE", "SETTINGS", "EVENTS", "METRICS", "RELAY", "CLIENT"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, *, with_type_only: bool = False) -> set[str]:
    """Modules `path` imports when it runs: `if TYPE_CHECKING:` blocks (names for the type checker) are
    left out, unless `with_type_only`."""
    tree = ast.parse(path.read_text(), str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if not with_type_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for statement in node.body for child in ast.walk(statement))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _is_routes_module(path: Path) -> bool:
    """A module that declares HTTP routes, or a room's wiring (`wiring.py`)."""
    return path.name == "wiring.py" or "RouteTableDef()" in path.read_text()


def test_pipeline_imports_nothing_of_the_server_or_the_web_stack() -> None:
    for path in _sources("pipeline"):
        bad = {name for name in _runtime_imports(path) if name.split(".")[0] in {"server", "aiohttp", "aiortc"}}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_http_edge_imports_only_leaf_modules_and_the_app_keys() -> None:
    # keys.py declares typed names and imports nothing of the rooms when it runs.
    allowed = {
        "server.bounded_json",
        "server.config",
        "server.fields",
        "server.keys",
        "server.http",
        "server.package_data",
    }
    for path in _sources("server/http"):
        imported = {name for name in _runtime_imports(path) if name.startswith("server")}
        bad = {name for name in imported if name != "server" and not any(name.startswith(a) for a in allowed)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_domain_modules_import_no_other_rooms_routes() -> None:
    routes = {_module_name(path) for room in ROOMS for path in _sources(f"server/{room}") if _is_routes_module(path)}
    assert "server.live.offer_routes" in routes and "server.jobs.routes" in routes
    for room in ROOMS:
        for path in _sources(f"server/{room}"):
            if _is_routes_module(path):
                continue
            foreign = {
                name for name in _runtime_imports(path) if name in routes and not name.startswith(f"server.{room}.")
            }
            assert not foreign, f"{path.relative_to(ROOT)} imports routes of another room: {sorted(foreign)}"


def test_the_core_keys_are_only_the_core() -> None:
    tree = ast.parse((ROOT / "server" / "keys.py").read_text())
    declared = {
        target.id
        for node in tree.body
        if isinstance(node, ast.AnnAssign | ast.Assign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert declared == CORE_KEYS


def test_a_room_reads_only_its_own_keys_and_the_core_ones() -> None:
    # What a room needs from another is handed in by the composition root (server/app.py) through a
    # key of the needing room's own: no room reaches into another's state.
    rooms_keys = {f"server.{room}.keys" for room in (*ROOMS, "http")}
    assert all((ROOT / name.replace(".", "/")).with_suffix(".py").is_file() for name in rooms_keys)
    for room in (*ROOMS, "http"):
        for path in _sources(f"server/{room}"):
            foreign = {
                name
                for name in _runtime_imports(path, with_type_only=True)
                if name in rooms_keys and name != f"server.{room}.keys"
            }
            assert not foreign, f"{path.relative_to(ROOT)} reads another room's keys: {sorted(foreign)}"


def test_nothing_outside_tests_imports_tests() -> None:
    for folder in ("pipeline", "server", "bench"):
        for path in _sources(folder):
            bad = {name for name in _runtime_imports(path) if name.split(".")[0] == "tests"}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_torch_is_imported_in_the_server_only_by_the_engine_loader() -> None:
    for path in _sources("server"):
        if path.name == "engine_service.py":
            continue
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        heavy = {name for name in names if name.split(".")[0] in {"torch", "diffusers", "transformers"}}
        heavy |= {name for name in names if name in {"pipeline.engine", "pipeline.models"}}
        assert not heavy, f"{path.relative_to(ROOT)} imports {sorted(heavy)}"


def _python(code: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("module", ["server.control.settings", "server.control.osc", "server.app", "pipeline"])
def test_control_plane_modules_leave_torch_out(module: str) -> None:
    result = _python(
        ["-c", f"import sys, {module}; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importing {module} loaded {result.stdout.strip()}"


def test_a_single_server_imports_no_extra() -> None:
    # The cluster's Redis client and mDNS are extras (pip install 'stylize[cluster]', '[mdns]').
    result = _python(
        ["-c", "import sys, server.app; print(sorted(m for m in ('redis', 'zeroconf') if m in sys.modules))"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_parses_flags_without_importing_torch() -> None:
    result = _python(["-X", "importtime", "-m", "server", "--help"])
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout
    imported = [
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    ]
    assert imported and not [name for name in imported if name.split(".")[0] in {"torch", "diffusers", "aiortc"}]


def test_a_bad_default_is_one_config_error_line_naming_the_key(tmp_path: Path) -> None:
    result = _python(["-m", "server", "--data-dir", str(tmp_path)], env={"STYLIZE_DEFAULTS_SEED": "1099511627776"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "[defaults] seed (STYLIZE_DEFAULTS_SEED)" in lines[0] and "4294967295" in lines[0]
