"""Load torch's shared libraries without holding Python's GIL, so importing torch beside a GUI does not freeze it.

``import torch`` in a worker thread still stalls every other Python thread: the dynamic loader maps
and initialises libtorch_cpu and friends (about a second) inside ``dlopen`` called with the GIL
held, and the GUI thread cannot run meanwhile.  Calling libc's ``dlopen`` through ctypes releases
the GIL for the call, so :func:`preload_torch_libraries` does that work while the GUI keeps
drawing; the ``import torch`` that follows finds the libraries already loaded.  Linux only (other
systems: nothing is done); any failure leaves the ordinary import to do the work.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# in dependency order; the first is loaded RTLD_GLOBAL as torch itself does
LIBRARIES = ("libtorch_global_deps.so", "libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so")


def preload_torch_libraries() -> list[str]:
    """dlopen torch's libraries with the GIL released (Linux); returns the names loaded, [] when skipped."""
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return []
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return []
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "lib"
    try:
        libc = ctypes.CDLL(None)  # a CDLL call releases the GIL (PyDLL would keep it)
        dlopen = libc.dlopen
    except (OSError, AttributeError):
        return []
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    loaded = []
    for name in LIBRARIES:
        path = folder / name
        if not path.is_file():
            continue
        mode = os.RTLD_NOW | (os.RTLD_GLOBAL if name == LIBRARIES[0] else os.RTLD_LOCAL)
        if not dlopen(os.fsencode(path), mode):
            log.debug("preloading %s failed; import torch will load it", path)
            break
        loaded.append(name)
    return loaded
