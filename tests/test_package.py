"""Package hygiene: cheap imports, lazy optional backends, a fast CLI."""

from __future__ import annotations

import subprocess
import sys
import time


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_import_lima_zoo_is_light():
    mods = _modules_after("import lima_zoo")
    heavy = {m for m in mods if m.split(".")[0] in {"torch", "timm", "onnx", "onnxruntime", "spconv", "torchsparse"}}
    assert not heavy, heavy
    assert "lima_zoo.training" not in mods


def test_using_the_engine_does_not_import_spconv():
    mods = _modules_after("import lima_zoo; lima_zoo.create_encoder('vit-s-minkunet34')")
    assert "torch" in mods and "spconv" not in mods and "lima_zoo.training" not in mods


def test_cli_help_is_fast_and_torch_free():
    mods = _modules_after("from lima_zoo.cli import main")
    assert "torch" not in mods
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lima_zoo.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "Usage" in done.stdout
    print(f"\nlima-zoo --help: {elapsed * 1000:.0f} ms")


def test_unknown_or_missing_backend_is_a_clear_error():
    import importlib.util

    import pytest

    from lima_zoo import create_encoder

    enc = create_encoder("vit-s-minkunet34")
    with pytest.raises(ValueError, match="unknown sparse backend 'cuda'"):
        enc.set_backend("cuda")
    if importlib.util.find_spec("torchsparse") is None:
        with pytest.raises(ValueError, match="not installed"):
            enc.set_backend("torchsparse")


def test_wheel_ships_the_kernel_source_and_data(tmp_path):
    """A wheel install must be able to build the fused kernel and find its recipes and cards."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("lima_zoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("lima_zoo/sparse/csrc/fused_conv.cpp", "lima_zoo/model_cards/template.md"):
        assert needed in names, f"{needed} missing from {wheel.name}"
    assert any(n.startswith("lima_zoo/training/recipes/") and n.endswith(".yaml") for n in names)


def test_runtime_and_pipeline_load_no_click():
    for module in ("lima_zoo.runtime", "lima_zoo.pipeline"):
        mods = _modules_after(f"import {module}")
        assert "click" not in mods, module
        assert not {m for m in mods if m.startswith(("lima_zoo.export", "lima_zoo.training", "lima_zoo.cli"))}, module


def _imported_lima_modules(path) -> set[str]:
    """Every lima_zoo module a file imports, at module level or inside a function, resolved to its
    absolute name (``from ..export import x`` in lima_zoo/cli/viz.py -> lima_zoo.export)."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1]
    package = (
        ".".join(path.relative_to(root).with_suffix("").parts[:-1])
        if path.name != "__init__.py"
        else ".".join(path.relative_to(root).parts[:-1])
    )
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lima_zoo")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("lima_zoo"):
                found.add(name)
    return found


def test_layers_import_downwards_only():
    """Core never imports training, export or cli (not even lazily inside a function); export never
    imports training or cli; training never imports cli (docs: architecture, layering)."""
    from pathlib import Path

    pkg = Path(__file__).parents[1] / "lima_zoo"
    above = {
        "core": ("training", "export", "cli"),
        "export": ("training", "cli"),
        "training": ("cli",),
        "cli": (),
        # the runtime only reads exported models; the pipeline embeds with whatever encoder it is given
        "runtime": ("training", "export", "cli", "pipeline"),
        "pipeline": ("training", "export", "cli"),
    }
    wrong = []
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg).parts
        layer = parts[0] if len(parts) > 1 and parts[0] in above else "core"
        for name in _imported_lima_modules(path):
            sub = name.split(".")[1] if name.count(".") else ""
            if sub in above[layer]:
                wrong.append(f"{path.relative_to(pkg)} ({layer}) imports {name}")
    assert not wrong, "\n".join(wrong)


def _import_edges() -> tuple[dict[str, set[str]], list[str]]:
    """Every lima_zoo module's imports of other lima_zoo modules (lazy ones inside functions too),
    resolved to modules (``from .x import y`` is module x.y when y is a submodule, else x), and every
    place a module imports another module's ``_private`` name."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1]
    pkg = root / "lima_zoo"
    modules = {}
    for path in pkg.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target not in modules:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        edges[name].add(sub)
                    else:
                        edges[name].add(target)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append(f"{name} imports {target}.{alias.name}")
        edges[name].discard(name)
    return edges, private


def test_no_import_circle_and_no_private_imports():
    """No module reaches itself through the imports of others (module-level or lazy), and no module
    imports another module's private name (docs: architecture, layering)."""
    edges, private = _import_edges()
    assert not private, "\n".join(private)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)
