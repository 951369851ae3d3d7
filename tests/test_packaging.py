"""Packaging checks that need no full PyInstaller build (which takes many minutes and gigabytes).

The frozen app only holds what PyInstaller's import analysis finds from the entry script, plus the
spec's hidden imports and collected packages.  So we run the app from source (``--self-test`` and
the GUI modules), record every module it loads, and check each would be bundled: our own modules
are reachable by static imports or listed as hidden imports; nothing loaded is in the spec's
excludes; third-party packages loaded by name are found by an import statement in a loaded module,
by a PyInstaller hook, or are listed in the spec; and every third-party module and compiled library
the run loads, also by name or by path (imagecodecs' codec modules, torchvision's operators), would
be collected (packaging/bundle_coverage.py).  Plus: the spec has no absolute paths, and
``--version``, ``--self-test`` and the first-start copy of the sample project work from source.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "packaging" / "stagescope.spec"
ENTRY = REPO / "app" / "__main__.py"

TRACE = """
import json, os, sys, sysconfig
baseline = sorted(sys.modules)  # what the interpreter and site's .pth files load: not the app's
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from app.__main__ import main
code = main(["--self-test"])
import app.gui.main, app.gui.main_window  # what a GUI start loads before the first window
from app.cli import build_parser
build_parser()  # the command line loads each pipeline's CLI module by name
# readers of formats no writer here makes (the self-test opened CZI, OME-Zarr and SVS files): what opening
# an ND2, LIF or VSI file loads first
from bioio_nd2 import Reader
from bioio_lif import Reader
from bioio_vsi import Reader
maps = []  # every shared library in the process, also those opened by path (torch.ops.load_library)
if os.path.exists("/proc/self/maps"):
    with open("/proc/self/maps") as f:
        maps = sorted({line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6})
with open(sys.argv[1], "w") as out:
    files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
    json.dump({"code": code, "modules": sorted(sys.modules), "files": files, "maps": maps, "baseline": baseline,
               "roots": sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})}, out)
"""


def spec_constants() -> dict[str, object]:
    """The literal lists the spec declares (HIDDEN_IMPORTS, COLLECT_PACKAGES, EXCLUDES, ...), read as the
    bundle-coverage check reads them (packaging/bundle_coverage.py, a script: loaded from its path)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("bundle_coverage", REPO / "packaging" / "bundle_coverage.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.spec_constants(SPEC)


def _env(tmp_path: Path) -> dict[str, str]:
    """A child environment whose user folders are under tmp_path, never the real ones."""
    return {**os.environ, "STAGESCOPE_DATA_DIR": str(tmp_path / "data"), "STAGESCOPE_CONFIG_DIR": str(tmp_path / "cfg"),
            "STAGESCOPE_DOCUMENTS_DIR": str(tmp_path / "docs"), "QT_QPA_PLATFORM": "offscreen",
            "TMPDIR": str(tmp_path)}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the self-test and import the GUI from source once; what it printed and every module it loaded."""
    tmp = tmp_path_factory.mktemp("trace")
    out = tmp / "modules.json"
    proc = subprocess.run([sys.executable, "-c", TRACE, str(out)], cwd=REPO, env=_env(tmp),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return {**json.loads(out.read_text()), "stdout": proc.stdout, "tmp": tmp, "trace": out}


# ------------------------------------------------------------------------------ static import graph


def _module_file(name: str) -> Path | None:
    """Source file of an ``app`` module (package __init__ or plain module), or None."""
    base = REPO.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imports(path: Path, name: str) -> set[str]:
    """Modules an app source file imports anywhere (also inside functions), as PyInstaller's analysis sees them."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def static_app_modules(roots: list[str]) -> set[str]:
    """``app`` modules reachable by import statements from ``roots`` (with their parent packages)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
            parent = ".".join(parts[:i])
            path = _module_file(parent)
            if parent in seen or path is None:
                continue
            seen.add(parent)
            todo.extend(m for m in _imports(path, parent) if m.split(".")[0] == "app")
    return seen


# ------------------------------------------------------------------------------ tests


def test_spec_has_no_absolute_paths_and_its_inputs_exist() -> None:
    text = SPEC.read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value
            assert not re.match(r"^(/|~|[A-Za-z]:[\\/]|\\\\)", value), f"absolute path in the spec: {value!r}"
    assert "SPECPATH" in text
    for relative in ("app/__main__.py", "resources/stagescope.png", "resources/sample_project.json", "models"):
        assert (REPO / relative).exists(), relative


def test_hidden_imports_and_collected_packages_import() -> None:
    import importlib.util

    constants = spec_constants()
    for name in constants["HIDDEN_IMPORTS"] + constants["COLLECT_PACKAGES"]:
        assert importlib.util.find_spec(name) is not None, f"the spec lists {name}, which does not exist"


@pytest.mark.slow
def test_self_test_from_source_passes_and_writes_its_report(traced: dict) -> None:
    out = traced["stdout"]
    assert traced["code"] == 0, out
    assert "self-test PASSED" in out and "PASSED   kaizen" in out
    report = Path(re.search(r"^report: (.+)$", out, re.M).group(1))
    data = json.loads(report.read_text())
    assert {p["pipeline"] for p in data["pipelines"]} >= {"kaizen", "brightfield", "stagetool"}
    # one file of each format a library here writes, opened through its reader (the frozen app's proof)
    assert [(f["format"], f["status"]) for f in data["formats"]] == [("czi", "passed"), ("ome-zarr", "passed"),
                                                                     ("svs", "passed")]
    assert re.search(r"PASSED +format czi +scene 1: 300 x 420 px", out)
    assert re.search(r"PASSED +format ome-zarr +Zarr v3: .*Zarr v2: ", out)
    assert report.is_relative_to(traced["tmp"])  # written to the temporary folder


@pytest.mark.slow
def test_every_app_module_loaded_is_reachable_or_a_hidden_import(traced: dict) -> None:
    hidden = spec_constants()["HIDDEN_IMPORTS"]
    bundled = static_app_modules(["app.__main__", *hidden])
    loaded = {m for m in traced["modules"] if m.split(".")[0] == "app" and _module_file(m) is not None}
    missing = sorted(loaded - bundled)
    assert not missing, f"loaded by name at run time, unseen by PyInstaller: add to HIDDEN_IMPORTS: {missing}"


@pytest.mark.slow
def test_nothing_loaded_at_run_time_is_excluded(traced: dict) -> None:
    constants = spec_constants()
    excludes = [x for x in constants["EXCLUDES"] if x not in constants["PROBED_OPTIONAL"]]
    hit = sorted(m for m in traced["modules"] for x in excludes if m == x or m.startswith(x + "."))
    assert not hit, f"the spec excludes modules the app loads: {hit}"


@pytest.mark.slow
def test_third_party_packages_loaded_by_name_are_covered(traced: dict) -> None:
    """A package loaded at run time must be found by an import statement, a PyInstaller hook or the spec."""
    pytest.importorskip("PyInstaller", reason="pyinstaller not installed (pip install -e .[test] brings it)")
    import _pyinstaller_hooks_contrib
    import PyInstaller

    hook_dirs = [Path(PyInstaller.__file__).parent / "hooks"]
    hook_dirs += [p for p in Path(_pyinstaller_hooks_contrib.__file__).parent.glob("*hooks") if p.is_dir()]
    hooked = {h.name[5:].split(".")[0] for d in hook_dirs for h in d.glob("hook-*.py")}
    constants = spec_constants()
    listed = {m.split(".")[0] for m in constants["HIDDEN_IMPORTS"] + constants["COLLECT_PACKAGES"]}
    tops = {m.split(".")[0] for m in traced["modules"]}
    files = traced["files"]
    # (names starting with "_" are compiled helpers that packages such as scipy load from their own folder)
    third_party = {t for t in tops if "site-packages" in str(files.get(t)) and t != "app" and not t.startswith("_")}
    sources = _loaded_source_texts(files)
    uncovered = sorted(t for t in third_party - hooked - listed
                       if not re.search(rf"^\s*(import|from)\s+{re.escape(t)}\b", sources, re.M))
    assert not uncovered, f"loaded by name, no import statement, hook or spec entry: {uncovered}"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps and ldd, as PyInstaller on Linux")
def test_bundle_holds_every_module_and_compiled_library_the_pipelines_load(traced: dict) -> None:
    """What the self-test loaded, also by name or path (codec modules, torchvision's ops), would be bundled.

    packaging/bundle_coverage.py runs PyInstaller's hooks for the loaded packages and reads import
    statements, links (ldd) and the spec's lists, in seconds, where a build takes half an hour.
    """
    pytest.importorskip("PyInstaller", reason="pyinstaller not installed (pip install -e .[test] brings it)")
    assert traced["maps"], "the trace recorded no shared libraries"
    proc = subprocess.run([sys.executable, str(REPO / "packaging" / "bundle_coverage.py"), str(traced["trace"])],
                          cwd=traced["tmp"], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    missing = json.loads(proc.stdout)
    assert not missing["hook_errors"], f"PyInstaller hooks that failed to run: {missing['hook_errors']}"
    assert not missing["modules"], ("modules a pipeline loads that the bundle would lack (add them to the spec's "
                                    f"HIDDEN_IMPORTS or COLLECT_PACKAGES): {missing['modules']}")
    assert not missing["libraries"], ("compiled libraries a pipeline loads by path or name that the bundle would lack "
                                      f"(add them to LIBRARIES_LOADED_AT_RUN_TIME): {missing['libraries']}")


def _loaded_source_texts(files: dict[str, str | None]) -> str:
    """The source of every loaded module file outside the standard library (to find who imports whom)."""
    texts = []
    for file in files.values():
        if file and file.endswith(".py") and ("site-packages" in file or Path(file).is_relative_to(REPO)):
            texts.append(Path(file).read_text(errors="replace"))
    return "\n".join(texts)


@pytest.mark.slow
def test_version_prints_version_and_device(tmp_path: Path) -> None:
    from app import __version__

    proc = subprocess.run([sys.executable, "-m", "app", "--version"], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"stagescope {__version__}" in proc.stdout and "device: " in proc.stdout
    assert re.search(r"device: (cpu|cuda|mps)", proc.stdout)


@pytest.mark.slow
def test_first_start_copies_sample_project_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.__main__ import install_sample_project

    for key, value in _env(tmp_path).items():
        if key.startswith("STAGESCOPE_"):
            monkeypatch.setenv(key, value)
    first = install_sample_project()
    assert first == tmp_path / "docs" / "Sample project"
    assert (first / "project.json").is_file() and any(first.rglob("*.tif"))
    (first / "mine.txt").write_text("a technician's file")
    assert install_sample_project() is None  # once only: the copy is left alone afterwards
    assert (first / "mine.txt").is_file()
    assert not list(tmp_path.glob("docs/*.partial"))


def test_frozen_paths_never_point_into_the_install_for_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core import paths

    install = tmp_path / "install"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(install), raising=False)
    monkeypatch.delenv("STAGESCOPE_DATA_DIR", raising=False)
    monkeypatch.delenv("STAGESCOPE_DOCUMENTS_DIR", raising=False)
    assert paths.is_frozen() and paths.bundled_sample_project_dir() == install / "sample-project"
    for writable in (paths.user_data_dir(), paths.user_models_dir(), paths.settings_path(), paths.documents_dir()):
        assert install not in writable.parents


def test_self_test_fails_on_a_broken_pipeline_and_tells_unfit_input_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from app import selftest
    from app.core.errors import ModelError
    from app.pipelines import registry

    def broken(*_args):
        raise ModuleNotFoundError("No module named 'scipy.ndimage'")  # what a bundle missing a module does
        yield  # a job generator

    def refuses(*_args):
        raise ModelError("expects 6 planes, this field has 9")
        yield

    fake_project = SimpleNamespace(images=lambda: [SimpleNamespace(name="nuclei_000", group="fluorescence nuclei"),
                                                   SimpleNamespace(name="field_planes", group="brightfield fields")])
    from app.pipelines.contract import Sample

    specs = {name: SimpleNamespace(name=name, model_pipelines=(name,), params=SimpleNamespace, analyze=job,
                                   sample=sample)  # the sample image each spec names
             for name, job, sample in (("kaizen", broken, Sample("fluorescence nuclei", "nuclei")),
                                       ("brightfield", refuses, Sample("brightfield fields", "planes")))}
    monkeypatch.setattr(registry, "pipelines", lambda hidden=True: specs)
    monkeypatch.setattr(selftest, "sample_project_copy", lambda target: fake_project)
    monkeypatch.setattr(selftest, "shipped_models", lambda pipelines: {p: f"models/{p}" for p in pipelines})
    monkeypatch.setattr(selftest, "quick_params", lambda spec: None)

    assert selftest.run_self_test(tmp_path) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAILED +kaizen +ModuleNotFoundError: No module named 'scipy.ndimage'", out)
    assert re.search(r"UNFIT +brightfield +ModelError", out) and "self-test FAILED" in out
    report = json.loads((tmp_path / "selftest-report.json").read_text())
    assert [(p["pipeline"], p["status"]) for p in report["pipelines"]] == [("kaizen", "failed"), ("brightfield", "unfit")]
    assert selftest.check_report(tmp_path / "selftest-report.json", []) is not None  # a mismatch is caught


def test_self_test_fails_when_a_reader_cannot_open_its_format(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle without libCZI's extension passes every pipeline but must still fail, naming the format."""
    from types import SimpleNamespace

    from app import selftest, selftest_formats
    from app.pipelines import registry

    def no_libczi(folder: Path) -> str:
        raise ModuleNotFoundError("No module named '_pylibCZIrw'")  # what a bundle missing the extension does

    monkeypatch.setattr(registry, "pipelines", lambda hidden=True: {"kaizen": SimpleNamespace(name="kaizen")})
    monkeypatch.setattr(selftest, "sample_project_copy", lambda target: SimpleNamespace(images=lambda: []))
    monkeypatch.setattr(selftest, "check_pipeline", lambda project, spec: selftest.PipelineCheck(
        spec.name, "passed", "ok", "nuclei_000", objects=3))
    monkeypatch.setitem(selftest_formats.CHECKS, "czi", no_libczi)

    assert selftest.run_self_test(tmp_path) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAILED +format czi +ModuleNotFoundError: No module named '_pylibCZIrw'", out)
    assert re.search(r"PASSED +format svs +768 x 512 px RGB", out) and "self-test FAILED" in out
    report = json.loads((tmp_path / "selftest-report.json").read_text())
    assert [(f["format"], f["status"]) for f in report["formats"]] == [
        ("czi", "failed"), ("ome-zarr", "passed"), ("svs", "passed")]
