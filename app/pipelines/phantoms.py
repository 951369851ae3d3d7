"""Every phantom kind in one call: core's nuclei and brightfield fields and the pipelines' own.

Core draws what every pipeline can use and names no pipeline; Stagetool's testis sections live in
:mod:`app.pipelines.stagetool.phantom`.  ``stagescope phantom`` and the sample project write
through :func:`write_phantom`, so they accept the same kinds.
"""

from __future__ import annotations

from pathlib import Path

from app.core import phantoms as core_phantoms
from app.core.errors import UserError
from app.pipelines.stagetool.phantom import DEFAULT_MARKERS, write_testis

KINDS = ("nuclei", "brightfield", "testis")


def write_phantom(kind: str, out_dir: str | Path, seed: int = 0, count: int | None = None, size: int | None = None,
                  markers: tuple[str, ...] | None = None, style: str | None = None) -> list[Path]:
    """Write ``count`` (default 3) phantoms of ``kind`` with their ground truth and a README.txt into ``out_dir``.

    ``style`` (testis only): how another lab's sections look (:data:`app.pipelines.stagetool.phantom_style.STYLES`).
    """
    if kind not in KINDS:
        raise UserError(f"unknown phantom kind '{kind}' (nuclei, brightfield or testis)")
    if kind == "testis":
        return write_testis(Path(out_dir), seed=seed, count=count or 3, size=size or 2048,
                            markers=markers or DEFAULT_MARKERS, style=style)
    if style not in (None, "default"):
        raise UserError("--style is for testis phantoms only")
    return core_phantoms.write_phantom(kind, Path(out_dir), seed=seed, count=count, size=size, markers=markers)
