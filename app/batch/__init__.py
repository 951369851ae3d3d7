"""Batches of images or sections, run here or spread over a Dask cluster, with nothing lost or duplicated.

Transport only: the work of one item is the pipeline's own (app.pipelines.runner.analyze_item,
the same step project runs and CLI commands take).  One task is one item (image, section,
brightfield field): :mod:`.tasks` runs it on a worker, writing its results into a temporary folder
inside the shared output folder and renaming it into place, so an item's folder is either complete
or absent.  Models travel as folder paths with their sha256 (verified on the worker, loaded once
per worker process).  :mod:`.cluster` connects to a
scheduler (``tcp://host:8786``), starts a ``local:N`` cluster or a SLURM/PBS one (dask-jobqueue),
:mod:`.runner` dispatches the tasks and gathers them, :mod:`.summary` writes the batch summary and
:mod:`.progress` draws the CLI's progress bar.  dask is imported only when a cluster is asked for.

Typical use (the GUI's run queue calls the same function)::

    from app.batch import run_batch
    result = run_batch("kaizen", ["images/"], "out/", cluster="local:2")
"""

from __future__ import annotations

from typing import Any


def run_batch(pipeline: str, inputs: Any, out: Any, cluster: str = "", models: Any = None, params: Any = None,
              progress: Any = None, cancelled: Any = None, **options: Any) -> dict[str, Any]:
    """Run ``pipeline`` over ``inputs`` into ``out`` (see :func:`app.batch.runner.run_batch`)."""
    from app.batch.runner import run_batch as _run_batch

    return _run_batch(pipeline, inputs, out, cluster=cluster, models=models, params=params, progress=progress,
                      cancelled=cancelled, **options)


__all__ = ["run_batch"]
