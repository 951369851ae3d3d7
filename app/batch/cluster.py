"""Where a batch runs: here (``""``), a running scheduler (``tcp://host:8786``), ``local:N`` or SLURM/PBS.

:func:`parse_cluster` reads the setting the CLI and the GUI share; :func:`open_client` yields a
``distributed.Client`` (and closes what it started).  ``local:N`` starts N worker processes on
loopback with one thread each (torch inside a worker then uses one core, which is what N
processes on N cores want).  ``slurm[:N]`` / ``pbs[:N]`` submit N jobs through dask-jobqueue
(``pip install 'stagescope[cluster]'``); their options (queue, account, cores, memory, walltime)
come as ``key=value`` pairs.  dask is imported here only, and only when a cluster is asked for.

A lab's own machines: start ``dask scheduler`` on one (port 8786; dashboard on 8787 when bokeh is
installed), and on each workstation, in the same Stagescope environment, one
``dask worker tcp://SCHEDULER:8786 --nworkers 1 --nthreads 1`` per GPU (``CUDA_VISIBLE_DEVICES=i``
to pin it).  Input images, the output folder and the model folders must have the same path on
every machine (a network share mounted alike); then run ``stagescope batch analyze ...
--scheduler tcp://SCHEDULER:8786``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import UserError

JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
JOBQUEUE_DEFAULTS = {"cores": 4, "memory": "16GB", "processes": 1, "walltime": "08:00:00"}
CONNECT_TIMEOUT_S = 30


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed cluster setting: kind "" (here), "scheduler", "local", "slurm" or "pbs"."""

    kind: str
    address: str = ""
    workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """For logs and the summary."""
        if self.kind == "":
            return "local batch (this process)"
        if self.kind == "scheduler":
            return f"scheduler {self.address}"
        return f"{self.kind} cluster, {self.workers} worker{'s' if self.workers != 1 else ''}"


def parse_cluster(text: str | None, options: dict[str, Any] | None = None) -> ClusterSpec:
    """Read ``""``, ``tcp://host:port``, ``local:N`` (N >= 1), ``slurm[:N]`` or ``pbs[:N]``."""
    text = (text or "").strip()
    if not text:
        return ClusterSpec("")
    if "://" in text:
        return ClusterSpec("scheduler", address=text)
    kind, _, count = text.partition(":")
    kind = kind.lower()
    if kind not in ("local", *JOBQUEUE_KINDS):
        raise UserError(f"cluster '{text}' not understood: use tcp://HOST:8786, local:N, slurm[:N] or pbs[:N]")
    if kind == "local" and not count:
        raise UserError("--cluster local needs a number of worker processes, e.g. local:2")
    try:
        workers = int(count) if count else 1
    except ValueError:
        raise UserError(f"cluster '{text}': '{count}' is not a number of workers") from None
    if workers < 1:
        raise UserError(f"cluster '{text}': at least one worker is needed")
    return ClusterSpec(kind, workers=workers, options=dict(options or {}))


def require_distributed() -> None:
    """Refuse clearly when dask.distributed is not installed."""
    if importlib.util.find_spec("distributed") is None:
        raise UserError("running on a cluster needs dask.distributed: pip install 'dask[distributed]'")


def _jobqueue_cluster(spec: ClusterSpec) -> Any:
    """A dask-jobqueue cluster scaled to ``spec.workers`` jobs."""
    if importlib.util.find_spec("dask_jobqueue") is None:
        raise UserError(f"--cluster {spec.kind} needs dask-jobqueue: pip install 'stagescope[cluster]' "
                        "(or pip install dask-jobqueue)")
    import dask_jobqueue

    options = {**JOBQUEUE_DEFAULTS, **spec.options}
    try:
        cluster = getattr(dask_jobqueue, JOBQUEUE_KINDS[spec.kind])(**options)
    except TypeError as error:
        raise UserError(f"--cluster {spec.kind}: bad --cluster-option: {error}") from error
    cluster.scale(jobs=spec.workers)
    return cluster


def _start_cluster(spec: ClusterSpec) -> Any:
    """The cluster object this batch starts (None when connecting to a running scheduler)."""
    if spec.kind == "local":
        from distributed import LocalCluster

        # ":0": a free port for the scheduler's web server (with or without bokeh), never a clash on 8787.
        # Worker processes log to our stderr; at ERROR a worker whose heartbeat races the scheduler's
        # shutdown (Ctrl-C on a busy machine) printed a traceback.  A task's own failure is recorded and
        # reported by the batch, so the workers' logs are kept to CRITICAL.
        return LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=":0", silence_logs=logging.CRITICAL, **spec.options)
    if spec.kind in JOBQUEUE_KINDS:
        return _jobqueue_cluster(spec)
    return None


def block_interrupts() -> Any:
    """Ignore Ctrl-C (SIGINT) while worker processes start; returns the handler to restore.

    A terminal sends Ctrl-C to every process of the foreground group, workers included: each then
    printed its own KeyboardInterrupt traceback.  "Ignore" is inherited through fork and exec
    (POSIX), and Python then installs no KeyboardInterrupt handler, so workers started meanwhile
    never see Ctrl-C and only this process stops, closing the cluster cleanly.  (A blocked signal
    mask would keep a Ctrl-C pressed during start-up, but distributed starts workers from threads
    that may predate the mask, so only "ignore" is reliable; a Ctrl-C in those seconds is lost.)
    None (nothing done) on Windows or outside the main thread (a batch the GUI started).
    """
    if threading.current_thread() is not threading.main_thread() or os.name == "nt":
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def restore_interrupts(previous: Any) -> None:
    """Undo :func:`block_interrupts`."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def quiet_shutdown() -> None:
    """Keep distributed's complaints about workers that go away mid-message off stderr after a Ctrl-C."""
    for name in ("distributed", "distributed.scheduler", "distributed.core", "distributed.nanny",
                 "distributed.worker", "distributed.comm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Any]:
    """A Client for ``spec``; what was started here is shut down on exit."""
    require_distributed()
    import dask
    from distributed import Client

    mask = block_interrupts()  # worker processes start deaf to the terminal's Ctrl-C
    try:
        cluster = _start_cluster(spec)
    except BaseException:
        restore_interrupts(mask)
        raise
    try:
        restore_interrupts(mask)
        with dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT_S}s"}):
            try:
                client = Client(cluster if cluster is not None else spec.address, timeout=CONNECT_TIMEOUT_S)
            except OSError as error:
                raise UserError(f"cannot reach the Dask scheduler {spec.address or spec.kind}: {error}") from error
        try:
            yield client
        except KeyboardInterrupt:
            quiet_shutdown()
            raise
        finally:
            client.close()
    except KeyboardInterrupt:
        quiet_shutdown()
        raise
    finally:
        if cluster is not None:
            cluster.close()


def has_bokeh() -> bool:
    """Whether this machine can serve the Dask dashboard's pages (they need bokeh)."""
    return importlib.util.find_spec("bokeh") is not None


def dashboard_address(client: Any) -> str | None:
    """The dashboard URL when the scheduler serves one with bokeh, else None ("no dashboard")."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        if not client.run_on_scheduler(has_bokeh):
            return None
        return client.dashboard_link
    except Exception:  # an old or unusual scheduler: no dashboard to point to
        return None


def workers_of(client: Any) -> dict[str, dict[str, Any]]:
    """Connected workers: address -> host, threads."""
    info = client.scheduler_info().get("workers", {})
    return {address: {"host": w.get("host"), "threads": w.get("nthreads")} for address, w in info.items()}
