"""How long the main (GUI) thread is frozen while torch is imported in a worker thread, with and without preloading.

Each variant runs in a fresh interpreter: a worker thread imports torch (after
app.core.torch_preload.preload_torch_libraries for "preloaded") while the main thread sleeps
1 ms at a time and records its longest pause.  Prints ms per run and the median.

    python bench/torch_import_stall.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, threading, time
preload = sys.argv[1] == "preloaded"
done = threading.Event()
def work():
    if preload:
        from app.core.torch_preload import preload_torch_libraries
        preload_torch_libraries()
    import torch  # noqa: F401
    done.set()
thread = threading.Thread(target=work, daemon=True)
last = time.perf_counter(); worst = 0.0
thread.start()
while not done.is_set():
    time.sleep(0.001)
    now = time.perf_counter(); worst = max(worst, now - last); last = now
print(f"{1000 * worst:.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    for variant in ("plain", "preloaded"):
        pauses = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-c", CHILD, variant], cwd=repo, capture_output=True, text=True,
                                 check=True)
            pauses.append(int(out.stdout.strip().splitlines()[-1]))
        print(f"{variant:10s} longest GUI-thread pause while importing torch: {pauses} ms, "
              f"median {statistics.median(pauses):.0f} ms", flush=True)


if __name__ == "__main__":
    main()
