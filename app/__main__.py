"""`python -m app`, the `stagescope` console script and the installed app's executable.

With no arguments it opens the desktop application; with a sub-command it is the command line
(app.cli).  Options of the entry point itself, handled here before the command line:

- ``--self-test``: headless check of the install (app.selftest); exit 0 or 1 with a summary.
- ``--version``: the version and the torch device it would use.
- ``--startup-time``: open the window, print the seconds from process start until it is shown
  and drawn, and exit (used to measure the installed app's start).

On the first start of an installed (frozen) app, the bundled sample project is copied to the
user's documents folder once and opened, so a technician sees something at once; nothing is
ever written inside the install folder.  (``STAGESCOPE_FIRST_START=1`` does the same from source.)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_IMPORTED_AT = time.monotonic()  # fallback start time where the OS cannot tell the process start

FIRST_START_MARKER = "first-start-done"
SAMPLE_PROJECT_NAME = "Sample project"
CPU_ONLY_MARKER = "CPU_ONLY"  # written into CPU-only bundles by packaging/stagescope.spec


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere: since this module was imported)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED_AT


def install_sample_project() -> Path | None:
    """First start only: copy the sample project to the documents folder; returns it, or None after that.

    A marker in the user's data folder makes this happen once, so a technician who deletes the copy
    does not get it back on every start.  The copy goes to a temporary name first and is renamed,
    so an interrupted first start leaves no half project.
    """
    from app.core.paths import bundled_sample_project_dir, documents_dir, user_data_dir

    marker = user_data_dir() / FIRST_START_MARKER
    if marker.exists():
        return None
    target = documents_dir() / SAMPLE_PROJECT_NAME
    if not (target / "project.json").is_file():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        source = bundled_sample_project_dir()
        if (source / "project.json").is_file():
            shutil.copytree(source, partial)
        else:  # an install without the built sample: generate it from the recipe
            from app.demo import build_sample_project

            build_sample_project(partial)
        partial.rename(target)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(target))
    return target


def _startup_time(argv: list[str]) -> int:
    """Open the window as a normal start would, print the seconds until it is drawn, then quit."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.cli import main as cli_main

    app = QApplication.instance() or QApplication([sys.argv[0]])

    def shown() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if w.isVisible() and w.inherits("QMainWindow")]
        if not windows:
            QTimer.singleShot(10, shown)
            return
        windows[0].repaint()  # drawn, not merely mapped
        print(f"window shown after {process_seconds():.2f} s", flush=True)
        app.quit()

    QTimer.singleShot(0, shown)
    return cli_main(argv)


def hide_gpus_in_cpu_only_bundle() -> None:
    """A CPU-only bundle lacks some CUDA libraries: keep torch off any GPU it might still see."""
    from app.core.paths import bundle_root

    if (bundle_root() / CPU_ONLY_MARKER).is_file():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def main(argv: Sequence[str] | None = None, default_command: str | None = "gui") -> int:
    """Handle the entry point's own options, else run the command line (``default_command`` when bare)."""
    args = list(sys.argv[1:] if argv is None else argv)
    hide_gpus_in_cpu_only_bundle()
    if "--self-test" in args:
        from app.selftest import run_self_test

        return run_self_test()
    if args in (["--version"], ["-V"]):
        from app.selftest import version_text

        print(version_text())
        return 0
    timing = "--startup-time" in args
    args = [a for a in args if a != "--startup-time"]
    if not args and default_command:
        args = [default_command]
    if args == ["gui"] and _frozen():
        try:
            sample = install_sample_project()
        except OSError as error:  # a read-only or full documents folder must not stop the app
            print(f"stagescope: could not copy the sample project: {error}", file=sys.stderr)
            sample = None
        if sample is not None:
            args.append(str(sample))
    if timing:
        return _startup_time(args)
    from app.cli import main as cli_main

    return cli_main(args)


def console_main() -> int:
    """The `stagescope` console script: like ``python -m app`` but bare prints the help (scripts' habit)."""
    return main(default_command=None)


def _frozen() -> bool:
    from app.core.paths import is_frozen

    return is_frozen() or bool(os.environ.get("STAGESCOPE_FIRST_START"))


if __name__ == "__main__":
    import multiprocessing

    multiprocessing.freeze_support()  # a frozen app's child processes (Dask workers, spawn) run their task, not the app
    sys.exit(main())
