"""The `stagescope` command line (console script and ``python -m app`` with arguments).

:mod:`.commands` holds the top-level parser and the commands that are no pipeline's (info,
evaluate, phantom, project, demo, gui); :mod:`.pipelines` gives every registered pipeline its
command group (its own module here, :mod:`.brightfield`, :mod:`.kaizen`, :mod:`.stagetool`, or the
generic ``analyze`` built from its params dataclass); :mod:`.batch` and :mod:`.export` are the
``batch`` and ``export`` groups; :mod:`.common` holds JSON output, ``KEY=VALUE`` parsing and the
exit codes.
"""

from __future__ import annotations

from app.cli.commands import EXIT_OK, EXIT_USER_ERROR, build_parser, main, quiet_libraries
from app.cli.common import print_json
from app.core.errors import os_error_message

__all__ = ["EXIT_OK", "EXIT_USER_ERROR", "build_parser", "main", "os_error_message", "print_json", "quiet_libraries"]
