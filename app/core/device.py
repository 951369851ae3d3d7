"""Where a job computes: the one rule that turns a device name into a torch device, and torch's CPU threads.

Every pipeline, CLI command, batch worker and the GUI's status bar pick the device here, so "auto"
means the same everywhere (a CUDA GPU, else Apple's MPS where the pipeline can use it, else the
CPU), and a device a pipeline cannot use is refused with one line the user can act on.  torch is
imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from app.core.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
ALL_DEVICES = ("cpu", "cuda", "mps")


def pick_device(name: str = "auto", supported: tuple[str, ...] = ALL_DEVICES, pipeline: str = "this pipeline"
                ) -> "torch.device":
    """The torch device ``name`` asks for (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    ``auto`` takes CUDA when present, else MPS when present and in ``supported``, else the CPU; a named
    device that is unknown, absent on the user's machine or not in ``supported`` raises UserError.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if "cuda" in supported and torch.cuda.is_available():
            return torch.device("cuda")
        if "mps" in supported and _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"unknown device {name!r}: use {', '.join(('auto',) + supported)} (or cuda:N)") from error
    if device.type not in supported:
        raise UserError(f"{pipeline} cannot run on {device.type}; use {', '.join(('auto',) + supported)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} was asked for, but this computer has no usable CUDA GPU; "
                            "use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} was asked for, but this computer has "
                            f"{torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise UserError("device mps was asked for, but this computer has no Apple GPU (MPS); use auto or cpu")
    return device


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def describe_device(name: str = "auto") -> str:
    """The device ``name`` would give a job, in words for the status bar and ``--version`` (imports torch)."""
    if (name or "auto").strip().lower() == "cpu":
        return "CPU"
    try:
        import torch
    except ImportError:
        return "CPU (no torch)"
    try:
        device = pick_device(name)
    except UserError:
        return f"CPU ({name} not available)"
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device.index or 0)}"
    if device.type == "mps":
        return "GPU: Apple MPS"
    return "CPU"


def use_threads(threads: int | None) -> None:
    """Hold torch to ``threads`` CPU threads on the calling thread; None or 0 keeps torch's choice.

    torch keeps the count per thread, so a job sets it on the thread that runs it.
    """
    if threads is None or int(threads) == 0:
        return
    if int(threads) < 0:
        raise UserError(f"threads must be at least 1 (or 0 for torch's choice), not {threads}")
    import torch

    if torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def job_params(params: Any, device: str = "auto", threads: int | None = None) -> Any:
    """``params`` with the Settings' device and CPU threads where the job left them at their defaults.

    A device of ``auto`` in the params takes ``device`` (the Settings' choice, shown in the status bar);
    ``threads`` fills a ``threads`` field still at its default.  A value typed into the run form wins.
    """
    if not dataclasses.is_dataclass(params) or isinstance(params, type):
        return params
    fields = {f.name: f for f in dataclasses.fields(params)}
    changes: dict[str, Any] = {}
    if "device" in fields and str(getattr(params, "device") or "auto").strip().lower() == "auto" \
            and device and device.strip().lower() != "auto":
        changes["device"] = device.strip()
    field = fields.get("threads")
    if threads is not None and field is not None and field.default is not dataclasses.MISSING \
            and getattr(params, "threads") == field.default:
        changes["threads"] = int(threads)
    return dataclasses.replace(params, **changes) if changes else params


__all__ = ["DEVICE_CHOICES", "pick_device", "describe_device", "use_threads", "job_params"]
