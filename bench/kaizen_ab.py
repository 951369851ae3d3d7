"""One quick Kaizen check of a parameter change: validation pooled AP, large nuclei, stardist-sample, empty phantom.

    python bench/kaizen_ab.py --threads 1 [--set background=3 --set merge_guard=0.6] [--limit N]

Runs the shipped model's card defaults with the ``--set`` overrides once over the nuclei-dsb2018
validation split (pooled AP50..AP90, objects per true nucleus of 1000-8000 px, s/image), the
stardist-sample image (reported, never used to choose) and the empty 512 px gradient phantom of
bench/kaizen.py (objects found with diameter 16 and with the diameter estimated on it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.metrics import instance_scores  # noqa: E402
from app.pipelines.kaizen.decompose import decompose  # noqa: E402
from app.pipelines.kaizen.model import load_kaizen_model  # noqa: E402
from app.pipelines.kaizen.params import DecomposeParams  # noqa: E402
from bench.kaizen import fmt, mean_ap, phantom_nuclei, stardist_sample, validation_set  # noqa: E402
from bench.kaizen_groups import large_nuclei_summary, per_nucleus_counts  # noqa: E402


def overridden(params: DecomposeParams, settings: list[str]) -> DecomposeParams:
    """``params`` with each 'name=value' of ``settings`` (value typed like the field's default)."""
    changes = {}
    for item in settings:
        name, value = item.split("=", 1)
        current = getattr(params, name)
        changes[name] = type(current)(value) if current is not None else float(value)
    return dataclasses.replace(params, **changes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-phantom", action="store_true", help="skip the empty phantom")
    parser.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    model = load_kaizen_model()
    params = overridden(model.defaults, args.set)
    print(f"overrides {args.set}; torch threads {torch.get_num_threads()}", flush=True)
    data = validation_set(args.limit)
    pairs, records, seconds = [], [], []
    for name, image, truth in data:
        started = time.perf_counter()
        result = decompose(image, model, params, name=name)
        seconds.append(time.perf_counter() - started)
        pairs.append((truth, result.labels()))
        records.append(per_nucleus_counts(truth, [(o.offset, o.mask) for o in result.objects]))
    scores = instance_scores(pairs)
    median, mean, n = large_nuclei_summary(records)
    print(f"validation ({len(data)}): {fmt(scores)}  mean {mean_ap(scores):.4f}  | {np.mean(seconds):.3f} s/image")
    print(f"large nuclei (1000-8000 px, {n}): objects per nucleus median {median:.2f} mean {mean:.3f}", flush=True)
    report = {"params": params.to_dict(), "validation": scores, "seconds_per_image": float(np.mean(seconds)),
              "large_nuclei_objects_per_nucleus": {"median": median, "mean": mean, "nuclei": n}}
    sample = stardist_sample()
    if sample is not None:
        s = instance_scores([(sample[1], decompose(sample[0], model, params).labels())])
        print(f"stardist-sample: {fmt(s)}  mean {mean_ap(s):.4f}", flush=True)
        report["stardist_sample"] = s
    if not args.no_phantom:
        empty = phantom_nuclei(512, 0, seed=0)
        for label, p in (("diameter 16", dataclasses.replace(params, diameter=16.0)), ("estimated", params)):
            started = time.perf_counter()
            result = decompose(empty, model, p)
            print(f"empty 512x512 gradient phantom, {label}: {len(result.objects)} objects "
                  f"(diameter {result.diameter or 0:.1f}), {time.perf_counter() - started:.1f} s", flush=True)
            report[f"empty_phantom_{label.replace(' ', '_')}"] = len(result.objects)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
