"""The package's layout as the README describes it: imports run one way, and the conversion side
stands apart from training (read from the sources, and checked in a fresh interpreter)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import REPO, cpu_env

PACKAGE = REPO / "ffcv_imagenet"
CONVERT = "ffcv_imagenet.convert"
SHARED = {"ffcv_imagenet", "ffcv_imagenet.beton_format", "ffcv_imagenet.beton_header", "ffcv_imagenet.fileio",
          "ffcv_imagenet.jpeg_region", "ffcv_imagenet._jpeg_region", "ffcv_imagenet.cli",
          "ffcv_imagenet.yuv420_records",
          # remote datasets (s3:// ...), read by inspect and written by convert as by training
          "ffcv_imagenet.remote", "ffcv_imagenet.remote_cache", "ffcv_imagenet.remote_pages"}
# The one arrow from the conversion side into training: `inspect --decode-rate` times the recipe's own
# decoder, imported only inside the function that serves that flag (importing convert still loads no
# training module: see the sys.modules test below).
DECODE_RATE_EDGE = ("ffcv_imagenet.convert.inspection", "ffcv_imagenet.decode_rate")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module ``path`` imports, at the top or inside a function, under any condition."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            targets = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as the list of modules along it, or [] (depth-first search, three colours)."""
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = "open"
        trail.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[name] = "done"
        trail.pop()
        return []

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_graph_reader_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "ffcv_imagenet.config" in graph["ffcv_imagenet.ffcv_recipes"]  # from .x import y, at the top
    assert "ffcv_imagenet.trainer" in graph["ffcv_imagenet.train_cli"]  # inside a function
    assert "ffcv_imagenet.convert.adoption" in graph["ffcv_imagenet.convert.write_cli"]  # in a subpackage
    assert "ffcv_imagenet.beton_format" in graph["ffcv_imagenet.convert.conversion"]  # from ..x import y
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_package_imports_have_no_cycle() -> None:
    assert find_cycle(import_graph()) == []


def test_conversion_side_imports_only_itself_and_the_shared_modules() -> None:
    graph = import_graph()
    source, target = DECODE_RATE_EDGE
    assert target in graph[source]
    graph[source] = graph[source] - {target}
    for name in graph:
        if name.startswith(CONVERT):
            outside = {target for target in reachable(graph, name) if not target.startswith(CONVERT)}
            assert outside <= SHARED, (name, outside - SHARED)


def test_importing_the_conversion_command_loads_neither_torch_nor_training() -> None:
    probe = ("import sys, ffcv_imagenet.convert, ffcv_imagenet.convert.write_cli\n"
             "print(' '.join(sorted(name for name in sys.modules if name.split('.')[0] in "
             "('torch', 'torchvision', 'ffcv', 'ffcv_imagenet'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cpu_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "ffcv_imagenet.convert.write_cli" in loaded
    assert not {name for name in loaded if name.split(".")[0] in ("torch", "torchvision", "ffcv")}
    assert {name for name in loaded if not name.startswith(CONVERT)} <= SHARED


def test_commands_that_answer_mistakes_at_once_load_no_torch() -> None:
    """train_imagenet.py, export (and its --evaluate-saved), the profile, plots and the SLURM launcher parse
    and check their arguments without the seconds torch and FFCV take to load."""
    commands = ("train_cli", "export_cli", "profile_cli", "plot_cli", "slurm_cli")
    probe = (f"import sys\nfor name in {commands!r}: __import__('ffcv_imagenet.' + name)\n"
             "print(' '.join(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'ffcv'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cpu_env(), cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
