"""What every CLI module shares: JSON output, ``KEY=VALUE`` options and the exit codes.

The bottom of the CLI package: the command modules (app/cli/*.py) and the top-level parser
(app/cli/commands.py) import it, never each other's helpers, so the CLI modules have no import loop.
"""

from __future__ import annotations

import json
from typing import Any

from app.core.atomic import json_default
from app.core.errors import UserError

EXIT_OK = 0
EXIT_FAILED_IMAGES = 1  # a batch finished, but some image failed (listed)
EXIT_USER_ERROR = 2  # bad input the user can fix: one line on stderr


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (numpy scalars and paths converted)."""
    print(json.dumps(data, indent=2, default=json_default))


def parse_pairs(values: list[str], option: str, as_json: bool = True) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict; values parsed as JSON when they are JSON, else kept as text."""
    pairs: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} expects KEY=VALUE, not '{item}'")
        if as_json:
            try:
                pairs[key.strip()] = json.loads(value)
                continue
            except ValueError:
                pass
        pairs[key.strip()] = value
    return pairs
