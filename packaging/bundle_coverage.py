"""Would the frozen app hold everything a real run loads?  A check in seconds, without a PyInstaller build.

A full build takes 20-40 minutes and gigabytes; a missing codec module or compiled operator only
shows when the built app runs.  This script takes a trace of a run from source (every module in
sys.modules with its file, and every shared library mapped into the process) and checks each
third-party module and compiled library against what PyInstaller would collect for
packaging/stagescope.spec:

- a module is collected when an import statement in a loaded source file names it (PyInstaller's
  import analysis), when a PyInstaller hook that applies lists it (the hooks are run here, with
  their collect_* helpers recorded instead of executed), or when the spec lists or collects it;
- a shared library that is no module is collected when a collected module or library links it
  (``ldd``, as PyInstaller's binary analysis on Linux) or when a hook or the spec collects the
  dynamic libraries of its package with a pattern that matches its name.

Usage: python packaging/bundle_coverage.py TRACE.json  -> prints JSON {"modules": [...],
"libraries": [...], "hook_errors": {...}}: what a bundle would miss (empty lists = covered).
Linux only (reads ldd); the trace's "maps" come from /proc/self/maps.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.machinery
import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

SPEC = Path(__file__).resolve().parent / "stagescope.spec"
SUBMODULES = "<submodules>"  # marks a recorded collect_submodules(package) in a hook's hiddenimports
DYNAMIC_LIBS = "<dynamic-libs>"  # marks a recorded collect_dynamic_libs(package) in a hook's binaries
IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([.\w]+)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)|import[ \t]+([^\n]*))", re.M)
EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def spec_constants(spec: Path = SPEC) -> dict[str, Any]:
    """The literal lists the spec declares (HIDDEN_IMPORTS, COLLECT_PACKAGES, EXCLUDES, ...)."""
    found = {}
    for node in ast.parse(spec.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def _under(name: str, prefixes: set[str] | list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------------------ PyInstaller hooks


def hook_collections(modules: set[str]) -> tuple[set[str], set[str], list[tuple[str, list[str]]], dict[str, str]]:
    """Run the PyInstaller hooks of the loaded modules (and of what they add, in turn).

    Returns (hidden imports, packages whose submodules are collected, [(package, library patterns)]
    collected with collect_dynamic_libs, {hook: error}).  The collect_* helpers are recorded, not
    run (collect_submodules("torch") alone would import all of torch); everything else in a hook runs.
    """
    import _pyinstaller_hooks_contrib
    import PyInstaller
    import PyInstaller.utils.hooks as helpers

    helpers.collect_submodules = lambda package, filter=None, on_error=None: [SUBMODULES + package]
    helpers.collect_dynamic_libs = lambda package, destdir=None, search_patterns=helpers.PY_DYLIB_PATTERNS: [
        (DYNAMIC_LIBS + package, json.dumps(list(search_patterns)))]
    helpers.collect_data_files = lambda *args, **kwargs: []
    helpers.collect_all = lambda package, **kwargs: ([], [(DYNAMIC_LIBS + package, '["*"]')], [SUBMODULES + package])
    hook_dirs = [Path(PyInstaller.__file__).parent / "hooks"]
    hook_dirs += [p for p in Path(_pyinstaller_hooks_contrib.__file__).parent.glob("*hooks") if p.is_dir()]
    hooks: dict[str, list[Path]] = {}
    for folder in hook_dirs:
        for hook in sorted(folder.glob("hook-*.py")):
            hooks.setdefault(hook.name[5:-3], []).append(hook)
    hidden: set[str] = set()
    libs: list[tuple[str, list[str]]] = []
    errors: dict[str, str] = {}
    done: set[str] = set()
    todo = [m for m in modules if m in hooks]
    while todo:  # a hook's hidden imports have hooks of their own (torch -> nvidia.cudnn -> its libraries)
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        for hook in hooks[name]:
            try:
                namespace = runpy.run_path(str(hook), run_name=f"__PyInstaller_hooks_{name}")
            except Exception as error:  # noqa: BLE001 - one broken hook must not hide the others
                errors[hook.name] = f"{type(error).__name__}: {error}"
                continue
            new = {x for x in namespace.get("hiddenimports", []) if isinstance(x, str)}
            hidden |= new
            todo += [m for m in new if m in hooks]
            for entry in namespace.get("binaries", []):
                if str(entry[0]).startswith(DYNAMIC_LIBS):
                    libs.append((entry[0][len(DYNAMIC_LIBS):], json.loads(entry[1])))
    collected = {x[len(SUBMODULES):] for x in hidden if x.startswith(SUBMODULES)}
    return {x for x in hidden if not x.startswith(SUBMODULES)}, collected, libs, errors


# ------------------------------------------------------------------------------ import statements


def imported_names(files: dict[str, str | None]) -> set[str]:
    """Every module an import statement in a loaded source file names (``from a import b`` gives a and a.b)."""
    names: set[str] = set()
    for module, file in files.items():
        if not file or not file.endswith(".py") or not os.path.isfile(file):
            continue
        package = module if file.endswith("__init__.py") else module.rpartition(".")[0]
        for match in IMPORT.finditer(Path(file).read_text(errors="replace")):
            if match.group(3) is not None:
                names.update(part.split(" as ")[0].strip().rstrip(";") for part in match.group(3).split("#")[0].split(","))
                continue
            base = match.group(1)
            if base.startswith("."):
                level = len(base) - len(base.lstrip("."))
                parts = package.split(".")[: len(package.split(".")) - level + 1]
                base = ".".join(parts + ([base.lstrip(".")] if base.lstrip(".") else []))
            names.add(base)
            for part in match.group(2).strip("()").split("#")[0].replace("\n", ",").split(","):
                item = part.split(" as ")[0].strip()
                if item and item != "*":
                    names.add(f"{base}.{item}")
    return names


# ------------------------------------------------------------------------------ the check


def linked_libraries(paths: list[str]) -> set[str]:
    """Resolved paths of every library the given binaries link, directly or not (ldd)."""
    found: set[str] = set()
    for start in range(0, len(paths), 200):
        proc = subprocess.run(["ldd", *paths[start:start + 200]], capture_output=True, text=True, check=False)
        found.update(m.group(1) for m in re.finditer(r"=> (/\S+)", proc.stdout))
    return {os.path.realpath(p) for p in found}


def collected_libraries(rule_dirs: list[tuple[str, list[str]]]) -> set[str]:
    """Every file collect_dynamic_libs(package, patterns) would take: in the package folder and below."""
    found = set()
    for folder, patterns in rule_dirs:
        for parent, _dirs, names in os.walk(folder):
            found.update(os.path.realpath(os.path.join(parent, n)) for n in names
                         if any(fnmatch.fnmatch(n, pattern) for pattern in patterns))
    return found


def _package_dir(package: str, files: dict[str, str | None]) -> str | None:
    """The folder of a package, loaded or not (hooks collect libraries of packages nothing imports)."""
    file = files.get(package)
    if file is None:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            return None
        locations = list(spec.submodule_search_locations or []) if spec else []
        return locations[0] if locations else None
    return os.path.dirname(file) if file.endswith("__init__.py") else None


def missing_from_bundle(trace: dict[str, Any], spec: Path = SPEC) -> dict[str, Any]:
    """What a bundle built from ``spec`` would lack of what the traced run loaded."""
    constants = spec_constants(spec)
    files: dict[str, str | None] = trace["files"]
    roots = tuple(trace["roots"])  # site-packages folders: third-party code
    skipped = set(trace["baseline"])  # loaded before the app started (site's .pth files): not the app's
    excluded = [x for x in constants["EXCLUDES"] if x in constants.get("PROBED_OPTIONAL", [])]
    modules = {m for m, f in files.items() if f and f.startswith(roots) and m not in skipped and not _under(m, excluded)}
    hidden, collected, hook_libs, errors = hook_collections(set(files))
    hidden |= set(constants["HIDDEN_IMPORTS"])
    collected |= set(constants["COLLECT_PACKAGES"])
    statically = imported_names(files)

    by_file: dict[str, set[str]] = {}  # Cython modules also register under their short name
    for module in modules:
        by_file.setdefault(os.path.realpath(files[module]), set()).add(module)

    # PyInstaller's import analysis collects the parent packages of every module it finds, also of one
    # whose own imports then fail (``from urllib3.contrib.pyopenssl import ...`` without pyOpenSSL)
    parents = {name.rsplit(".", k)[0] for name in statically | hidden for k in range(1, name.count(".") + 1)}

    def covered(module: str) -> bool:
        return module in statically or module in hidden or module in parents or _under(module, collected)

    loaded = set(files)
    missing_modules = []
    covered_binaries = []
    for file, names in by_file.items():
        # a package is collected when one of its loaded submodules is
        ok = any(covered(n) or any(covered(m) for m in loaded if m.startswith(n + ".")) for n in names)
        if not ok:
            missing_modules.append(max(names, key=lambda n: n.count(".")))
        elif file.endswith(EXTENSION_SUFFIXES):
            covered_binaries.append(file)

    lib_rules = list(hook_libs) + list(constants.get("LIBRARIES_LOADED_AT_RUN_TIME", {}).items())
    rule_dirs = [(os.path.realpath(d), patterns) for p, patterns in lib_rules if (d := _package_dir(p, files))]
    excluded_dirs = [os.path.realpath(d) for p in excluded if (d := _package_dir(p, files))]
    module_files = {os.path.realpath(f) for f in files.values() if f}
    libraries = {os.path.realpath(p) for p in trace["maps"] if p.startswith(roots)} - module_files
    libraries = {p for p in libraries if not p.startswith(tuple(d + os.sep for d in excluded_dirs))}
    by_rule = collected_libraries(rule_dirs)
    linked = linked_libraries(sorted(set(covered_binaries) | by_rule))
    missing_libraries = sorted(os.path.relpath(p, next(r for r in roots if p.startswith(r)))
                               for p in libraries - by_rule - linked)
    return {"modules": sorted(missing_modules), "libraries": missing_libraries, "hook_errors": errors}


def main(argv: list[str]) -> int:
    """Print what a bundle would miss of the traced run (JSON); exit 0 when nothing, else 1."""
    trace = json.loads(Path(argv[0]).read_text())
    result = missing_from_bundle(trace, Path(argv[1]) if len(argv) > 1 else SPEC)
    print(json.dumps(result, indent=1))
    return 1 if result["modules"] or result["libraries"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
