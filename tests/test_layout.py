"""The package layout is the architecture: layers, no cycles, a tested import contract.

``src/supervisor`` is grouped by layer, bottom to top::

    foundation   supervisor.{errors, config, limits, policy, auth, atomicfile}: values, rules
    models       supervisor.models: what a model is made of on disk
    supervision  supervisor.supervision: the nursery tree, pools, workers, metrics
    http         supervisor.http: bytes on sockets (HTTP/1.1 framing, the lean server)
    runner       supervisor.runner: starting a server from outside and waiting on it
    api          supervisor.api: routes and renderers over the supervision layer
    grpc         supervisor.grpc: the gRPC ports, over the api layer's pipeline and renderers
    root         supervisor, supervisor.{__main__, cli, server}: composition and CLI

Every import points down (or stays inside its own subpackage), no module takes
part in an import cycle (TYPE_CHECKING imports included), every name imported
from another module is in that module's ``__all__``, and docs/design.md's module
map lists exactly the modules there are. The protoc-generated modules
(``supervisor.grpc.protos.*_pb2*``, checked by tests/test_grpc_protos.py) have no
``__all__``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGES = ("supervisor", "handlers")

FOUNDATION = frozenset({"errors", "config", "limits", "policy", "auth", "atomicfile"})
RANKS = {"models": 1, "supervision": 2, "http": 3, "runner": 3, "api": 4, "grpc": 5}
ROOT_RANK = 6


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package``: dotted name -> file."""
    found = {}
    for path in sorted((SRC / package).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


ALL = {name: path for package in PACKAGES for name, path in modules(package).items()}


def imports(path: Path) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(module, names) for every import in the file, wherever it stands."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, tuple(alias.name for alias in node.names)


def edges(name: str) -> set[str]:
    """The project modules that ``name`` imports (submodules named in a from-import count)."""
    out = set()
    for module, names in imports(ALL[name]):
        if module not in ALL:
            continue
        subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in ALL}
        out |= subs or {module}
        if subs and len(subs) < len(names):
            out.add(module)
    out.discard(name)
    return out


def rank(name: str) -> int:
    """The layer of a supervisor module (see the module docstring)."""
    parts = name.split(".")
    if len(parts) == 1:
        return ROOT_RANK
    if len(parts) == 2:
        return 0 if parts[1] in FOUNDATION else ROOT_RANK
    return RANKS[parts[1]]


SUPERVISOR = sorted(n for n in ALL if n.split(".")[0] == "supervisor")


@pytest.mark.parametrize("name", SUPERVISOR)
def test_every_import_points_down_a_layer(name: str) -> None:
    up = [
        dep
        for dep in edges(name)
        if dep.startswith("supervisor")
        and rank(dep) > rank(name)
        and not (rank(dep) == rank(name) and dep.split(".")[:2] == name.split(".")[:2])
    ]
    assert not up, f"{name} (layer {rank(name)}) imports from higher layers: {up}"


def test_no_module_is_in_an_import_cycle() -> None:
    graph = {name: edges(name) for name in ALL}
    cycles = [scc for scc in strongly_connected(graph) if len(scc) > 1]
    assert not cycles, f"import cycles: {cycles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    scc = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        scc.append(top)
                        if top == node:
                            break
                    result.append(scc)
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return result


@pytest.mark.parametrize("name", sorted(ALL))
def test_names_imported_across_modules_are_in_their_all(name: str) -> None:
    missing = []
    for module, names in imports(ALL[name]):
        if module not in ALL or module == name:
            continue
        exported = getattr(importlib.import_module(module), "__all__", None)
        assert exported is not None, f"{module} has no __all__ (imported by {name})"
        missing += [
            f"{module}.{n}" for n in names if n not in exported and f"{module}.{n}" not in ALL
        ]
    assert not missing, f"{name} imports names that are not in their module's __all__: {missing}"


def generated(name: str) -> bool:
    """A module protoc wrote (no ``__all__``; regenerated and compared by a test)."""
    return name.startswith("supervisor.grpc.protos.") and name.endswith(("_pb2", "_pb2_grpc"))


@pytest.mark.parametrize("name", sorted(n for n in ALL if not generated(n)))
def test_every_all_names_real_objects(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert sorted(set(exported)) == sorted(exported), f"{name}.__all__ repeats a name"
    absent = [n for n in exported if not hasattr(module, n)]
    assert not absent, f"{name}.__all__ names what it lacks: {absent}"


def test_the_supervisor_process_modules_never_import_torch_numpy_or_quart_on_the_lean_path() -> (
    None
):
    probe = (
        "import sys, supervisor.http.lean, supervisor.api.fastpath, supervisor.api.predict; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'numpy', 'quart', 'quart_trio', 'werkzeug', 'hypercorn'}); print(bad)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_design_md_module_maps_list_every_module_and_no_stale_one() -> None:
    from tests.module_map import DESIGN, PACKAGES, render

    text = DESIGN.read_text()
    for package in PACKAGES:
        assert f"<!-- module-map: {package} -->" in text
    assert render(text) == text, "docs/design.md's module map is stale: python tests/module_map.py"


def test_every_exception_is_in_the_error_tree_or_listed_as_local() -> None:
    from supervisor.errors import LOCAL_ERRORS, SupervisorError

    found = set()
    for name in SUPERVISOR:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found.add((f"{name}.{attr}", issubclass(value, SupervisorError)))
    outside = sorted(
        n for n, in_tree in found if not in_tree and not n.startswith("supervisor.errors.")
    )
    assert outside == sorted(LOCAL_ERRORS), "every exception is in errors.py's tree or LOCAL_ERRORS"
    in_tree_elsewhere = sorted(
        n for n, in_tree in found if in_tree and not n.startswith("supervisor.errors.")
    )
    assert not in_tree_elsewhere, (
        f"errors of the tree live in supervisor.errors: {in_tree_elsewhere}"
    )


# The import contract: what embedders and the docs may import from each package.
PUBLIC = {
    "supervisor": {
        "DISTRIBUTION",
        "CanaryFailed",
        "InferItem",
        "InvalidRequest",
        "ModelConfig",
        "ModelConflict",
        "ModelNotFound",
        "ModelUnavailable",
        "ModelVersionNotFound",
        "ReplyItem",
        "RestartPolicy",
        "ServerConfig",
        "StreamFailed",
        "Supervisor",
        "SupervisorError",
        "WorkerDied",
        "WorkerFailure",
        "WorkerStartFailed",
        "WorkerTimeout",
        "load_config",
        "open_supervisor",
    },
    "supervisor.runner": {
        "Endpoint",
        "Failure",
        "FailureKind",
        "ModelServerRunner",
        "RunnerError",
        "RunnerState",
        "RunnerStateError",
        "ServerStartFailed",
        "SyncModelServerRunner",
    },
    "supervisor.api": set(),
    "supervisor.grpc": set(),
    "supervisor.http": set(),
    "supervisor.models": set(),
    "supervisor.supervision": set(),
    "handlers": {"Context", "PredictionException", "send_intermediate_predict_response"},
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_each_package_exports_exactly_its_contract(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == PUBLIC[package]
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_the_documented_import_paths_work() -> None:
    docs = (ROOT / "docs").glob("*.md")
    found = set()
    for page in [*docs, ROOT / "README.md"]:
        for line in page.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("from supervisor") and " import " in stripped:
                module, _, names = stripped.partition(" import ")
                found.add((module.removeprefix("from "), names.strip("( ")))
    assert found, "the docs show no import"
    for module, names in sorted(found):
        imported = importlib.import_module(module)
        for name in filter(None, (n.strip() for n in names.split(","))):
            assert hasattr(imported, name), f"docs import {name} from {module}, which lacks it"
