"""Kaizen benchmark on the nuclei-dsb2018 validation split, against Otsu + watershed in the same process.

    python bench/kaizen.py [--model NAME_OR_DIR] [--limit N]        # accuracy, speed, scaling, batching
    python bench/kaizen.py tune --model DIR [--limit N] [--write]   # choose margins on validation
    python bench/kaizen.py tune --size-only [--write]               # only the size ladder and stop rule

Prints AP50..AP90 and seconds per image for Kaizen and the classical baseline; how time grows with
the number of objects versus the number of pixels; and the speed-up from sending all candidates of
a round through the network as one batch instead of one at a time.  ``tune`` chooses
``accept_margin``, ``min_residual``, ``error_rounds`` and ``mask_fraction`` by coordinate search on
the validation split (mean of AP50..AP90), then the size ladder and stop rule (bench/kaizen_size.py)
and, with ``--write``, stores them and the validation
numbers in the model card.  The validation split is the fixed hash rule of
:func:`app.pipelines.kaizen.train.is_validation`; nothing outside ../shared/data is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.metrics import instance_scores  # noqa: E402
from app.pipelines.kaizen.decompose import decompose  # noqa: E402
from app.pipelines.kaizen.model import KaizenModel, load_kaizen_model  # noqa: E402
from app.pipelines.kaizen.params import DecomposeParams  # noqa: E402
from app.pipelines.kaizen.sizing import as_gray, estimate_diameter, normalise  # noqa: E402
from app.pipelines.kaizen.train import SPLIT_RULE, is_validation  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KEYS = ("AP50", "AP60", "AP70", "AP80", "AP90")


def validation_set(limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, labels) of the nuclei-dsb2018 validation split, in name order."""
    import tifffile

    folder = DATA / "nuclei-dsb2018"
    if not folder.is_dir():
        raise SystemExit(f"real data not found at {folder}")
    names = [p.stem for p in sorted((folder / "images").glob("*.tif")) if is_validation(p.stem)]
    names = names[:limit] if limit else names
    return [(n, tifffile.imread(folder / "images" / f"{n}.tif"), tifffile.imread(folder / "labels" / f"{n}.tif"))
            for n in names]


def stardist_sample() -> tuple[np.ndarray, np.ndarray] | None:
    import tifffile

    folder = DATA / "stardist-sample"
    if not (folder / "img2d.tif").exists():
        return None
    return tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")


def baseline(image: np.ndarray) -> np.ndarray:
    """Otsu threshold + distance-transform watershed (scikit-image), seeds spaced by the estimated size."""
    from scipy import ndimage as ndi
    from skimage import feature, filters, segmentation

    norm, _, _ = normalise(as_gray(image))
    diameter = estimate_diameter(norm) or 10.0
    smooth = filters.gaussian(norm, sigma=max(1.0, diameter / 12))
    fg = smooth > filters.threshold_otsu(smooth)
    parts, _ = ndi.label(fg)
    sizes = np.bincount(parts.ravel())
    fg = ndi.binary_fill_holes(fg & (sizes[parts] >= max(4, int(0.05 * diameter**2))))
    dist = ndi.distance_transform_edt(fg)
    components, _ = ndi.label(fg)
    peaks = feature.peak_local_max(dist, min_distance=max(2, int(round(0.3 * diameter))), labels=components,
                                   exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-dist, markers, mask=fg).astype(np.uint16)


def evaluate(model: KaizenModel, data, params: DecomposeParams, diameters: dict[str, float] | None = None):
    """Pooled instance scores and seconds per image of Kaizen on ``data`` (optionally with cached diameters)."""
    pairs, seconds, counts = [], [], []
    for name, image, truth in data:
        p = dataclasses.replace(params, diameter=diameters[name]) if diameters and diameters.get(name) else params
        started = time.perf_counter()
        result = decompose(image, model, p, name=name)
        seconds.append(time.perf_counter() - started)
        counts.append(len(result.objects))
        pairs.append((truth, result.labels()))
    return instance_scores(pairs), np.array(seconds), np.array(counts)


def fmt(scores: dict) -> str:
    return "  ".join(f"{k} {scores[k]:.3f}" for k in KEYS) + f"  | P {scores['precision']:.3f} R {scores['recall']:.3f}"


def mean_ap(scores: dict) -> float:
    return float(np.mean([scores[k] for k in KEYS]))


def bench(args: argparse.Namespace) -> None:
    import torch

    model = load_kaizen_model(args.model)
    data = validation_set(args.limit)
    params = model.defaults
    print(f"model {model.card.name} ({model.card.folder}); torch threads {torch.get_num_threads()}")
    print(f"validation split: {len(data)} images of nuclei-dsb2018 ({SPLIT_RULE})")
    print(f"params: {params.to_dict()}")
    decompose(data[0][1], model)  # warm-up
    ours, ours_s, _ = evaluate(model, data, params)
    pairs, base_s = [], []
    for _, image, truth in data:
        started = time.perf_counter()
        pairs.append((truth, baseline(image)))
        base_s.append(time.perf_counter() - started)
    base = instance_scores(pairs)
    print("\n== accuracy on the validation split (pooled TP/(TP+FP+FN)) ==")
    print(f"kaizen    {fmt(ours)}  | {ours_s.mean():.3f} s/image")
    print(f"baseline  {fmt(base)}  | {np.mean(base_s):.3f} s/image  (Otsu + distance-transform watershed)")
    print("ratio kaizen/baseline: " + "  ".join(f"{k} {ours[k] / max(base[k], 1e-9):.2f}" for k in KEYS))
    sample = stardist_sample()
    if sample is not None:
        image, truth = sample
        k = instance_scores([(truth, decompose(image, model).labels())])
        b = instance_scores([(truth, baseline(image))])
        print("\n== stardist-sample img2d.tif vs mask2d.tif (independent test image) ==")
        print(f"kaizen    {fmt(k)}")
        print(f"baseline  {fmt(b)}")
    groups(model, data, args.peer)
    if not args.groups_only:
        scaling(model, data, ours_s)
        batching(model, data[: min(20, len(data))])


BEFORE = {"scales": "1", "switch_share": 0.0, "min_peak": 0.0, "min_head_agreement": 0.0, "min_contrast": 0.0,
          "min_snr": 0.0, "background": 0.0, "merge_guard": 0.0}  # the earlier defaults: one diameter, no stop rule
WORST_DIR = DATA.parent.parent / "notes" / "kaizen-worst"


def groups(model: KaizenModel, data, peer: Path | None = None) -> None:
    """Kaizen before (one estimated diameter, no stop rule) and after, Otsu, and a peer's saved predictions
    (bench/peers: StarDist), per image group; the worst 10 Kaizen images are drawn."""
    from bench.kaizen_groups import compare, masks_of_labels, peer_method

    before = dataclasses.replace(model.defaults, **BEFORE)

    def kaizen(params: DecomposeParams):
        def fn(image):
            result = decompose(image, model, params)
            return result.labels(), [(o.offset, o.mask) for o in result.objects]
        return fn

    def otsu(image):
        labels = baseline(image)
        return labels, masks_of_labels(labels)

    print("\n== per image group: kaizen before (one diameter, no stop rule), after (card defaults), Otsu ==")
    methods = {"kaizen-before": kaizen(before), "kaizen": kaizen(model.defaults), "otsu+watershed": otsu}
    if peer is not None:
        methods["stardist"] = peer_method(Path(peer), data)
    compare(methods, data, worst_dir=WORST_DIR, worst_of="kaizen")


def phantom_nuclei(side: int, count: int, seed: int = 0) -> np.ndarray:
    """Core phantom nuclei of about 16 px (app.core.phantoms: some touch or overlap), for timing."""
    from app.core.phantoms import nuclei

    return nuclei(seed=seed, size=side, count=count, radius=(7.0, 9.0)).image


def _time(model: KaizenModel, image: np.ndarray, params: DecomposeParams, repeats: int = 3) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        result = decompose(image, model, params)
        best = min(best, time.perf_counter() - started)
        n = len(result.objects)
    return best, n


def scaling(model: KaizenModel, data, seconds: np.ndarray) -> None:
    """Time against objects and against pixels: real validation images and controlled phantoms."""
    objects = np.array([len(np.unique(t)) - 1 for _, _, t in data], float)
    pixels = np.array([t.size for _, _, t in data], float)
    print("\n== cost: objects vs pixels ==")
    for what, x in (("objects (truth)", objects), ("pixels", pixels)):
        r = np.corrcoef(x, seconds)[0, 1]
        print(f"validation images: correlation of seconds with {what}: r = {r:.2f}")
    slope = np.polyfit(objects, seconds, 1)[0]
    print(f"validation images: {1000 * slope:.1f} ms per object (least squares)")
    params = dataclasses.replace(model.defaults, diameter=16.0)
    print("phantom nuclei (app.core.phantoms, diameter ~16 px, 15% overlapping, 20% touching), best of 3:")
    empty = np.zeros((256, 256), np.uint16)
    t, _ = _time(model, empty, params)
    print(f"  empty 256x256: {1000 * t:.2f} ms")
    base = None
    for count in (0, 10, 30, 60, 120):
        t, n = _time(model, phantom_nuclei(512, count, seed=count), params)
        base = base or t
        print(f"  512x512 with {count:3d} nuclei: {t:.3f} s ({n} objects found)")
    t256 = None
    for side in (256, 512, 1024):
        t, n = _time(model, phantom_nuclei(side, 30, seed=side), params)
        t256 = t256 or t
        print(f"  {side}x{side} with 30 nuclei: {t:.3f} s ({n} objects)  x{t / t256:.2f} of 256x256 "
              f"for x{(side / 256) ** 2:.0f} the pixels")
    t, n = _time(model, phantom_nuclei(256, 30, seed=7), params)
    print(f"  256x256 with 30 nuclei (issue target < 1 s): {t:.3f} s ({n} objects)")


def batching(model: KaizenModel, data) -> None:
    """All candidates of a round in one network call versus one call per candidate."""
    batched = dataclasses.replace(model.defaults, batch_size=512)
    single = dataclasses.replace(model.defaults, batch_size=1)
    _, tb, _ = evaluate(model, data, batched)
    _, ts, _ = evaluate(model, data, single)
    print("\n== batched candidates ==")
    print(f"{len(data)} validation images: one batch per round {tb.sum():.2f} s, one candidate per call "
          f"{ts.sum():.2f} s: batched is x{ts.sum() / tb.sum():.1f} faster")


MASK_OPTIONS = (("image", 0.1), ("image", 0.3), ("image", 1.0), ("object", 0.15), ("object", 0.2), ("object", 0.3),
                ("head", 0.5))


def tune(args: argparse.Namespace) -> None:
    """Coordinate search of the decomposition guards on the validation split (mean of AP50..AP90).

    Each setting of the search parameters runs the decomposition once per image; every mask rule is
    then scored on the same objects (masks do not change what is found).
    """
    from app.core.jobs import run
    from app.pipelines.kaizen.decompose import objects_from_search, search_job
    from app.pipelines.kaizen.outputs import Decomposition

    from bench.kaizen_size import tune_size

    model = load_kaizen_model(args.model)
    data = validation_set(args.limit)
    if args.size_only:  # only the second stage, from the card's margins and mask rule
        params, final = tune_size(model, data, model.defaults)
        print(f"\nchosen: {params.to_dict()}\nvalidation: {fmt(final)}  mean {mean_ap(final):.4f}")
        if args.write:
            write_card(model, params, final, len(data))
        return
    grays = {name: as_gray(image) for name, image, _ in data}
    diameters = {name: estimate_diameter(normalise(gray)[0]) for name, gray in grays.items()}
    grid = {"accept_margin": (0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8), "min_residual": (0.04, 0.07, 0.1, 0.14, 0.2, 0.26, 0.32),
            "error_rounds": (0, 1)}
    if args.fine:  # a second pass around the card's current values
        grid = {"accept_margin": (0.45, 0.6, 0.7, 0.8), "min_residual": (0.14, 0.2, 0.26, 0.32), "error_rounds": (0, 1)}
    cache: dict[tuple, tuple[float, DecomposeParams, dict]] = {}
    every: dict[tuple, dict] = {}  # (search key, mask rule, fraction) -> scores

    def best_masks(p: DecomposeParams) -> tuple[float, DecomposeParams, dict]:
        key = tuple(getattr(p, k) for k in grid)
        if key in cache:
            return cache[key]
        started = time.perf_counter()
        searches = [(truth, grays[name], run(search_job(grays[name], model,
                                                        dataclasses.replace(p, diameter=diameters[name]))))
                    for name, _, truth in data]
        seconds = (time.perf_counter() - started) / len(data)
        best = None
        for rule, fraction in MASK_OPTIONS:
            q = dataclasses.replace(p, mask_rule=rule, mask_fraction=fraction)
            pairs = [(truth, Decomposition(gray.shape, objects_from_search(s, gray, model.patch, q)).labels()
                      if s else np.zeros(gray.shape, np.uint16)) for truth, gray, s in searches]
            scores = instance_scores(pairs)
            every[(key, rule, fraction)] = scores
            print(f"  {fmt(scores)}  mean {mean_ap(scores):.4f}  {seconds:.2f} s/img  <- "
                  f"{ {k: getattr(q, k) for k in (*grid, 'mask_rule', 'mask_fraction')} }", flush=True)
            if best is None or mean_ap(scores) > best[0]:
                best = (mean_ap(scores), q, scores)
        cache[key] = best
        return best

    params = model.defaults
    for name, values in grid.items():
        results = [best_masks(dataclasses.replace(params, **{name: v})) for v in values]
        params = max(results, key=lambda r: r[0])[1]
        print(f"{name} = {getattr(params, name)}  (mask {params.mask_rule} {params.mask_fraction})", flush=True)
    _, params, final = best_masks(params)
    paper = every[(tuple(getattr(params, k) for k in grid), "image", 0.1)]
    print(f"\nchosen: {params.to_dict()}\nvalidation: {fmt(final)}  mean {mean_ap(final):.4f}")
    print(f"same objects, the paper's mask rule (0.1 x image mean): {fmt(paper)}  mean {mean_ap(paper):.4f}")
    params, final = tune_size(model, data, params)  # second stage: size ladder and stop rule
    print(f"\nwith size ladder and stop rule: {params.to_dict()}\nvalidation: {fmt(final)}  mean {mean_ap(final):.4f}")
    if args.write:
        write_card(model, params, final, len(data), paper)


def write_card(model: KaizenModel, params: DecomposeParams, val: dict, n_images: int,
               paper: dict | None = None) -> None:
    """Store the chosen defaults and the validation / stardist-sample numbers in the model card."""
    from app.core.atomic import atomic_write_json
    from app.core.modelcard import CARD_FILE

    card = model.card
    chosen = dataclasses.replace(params, diameter=None, device="auto")
    metrics = dict(card.metrics)
    metrics["validation"] = {"data": f"nuclei-dsb2018 validation split, {n_images} images ({SPLIT_RULE}); "
                                     "decomposition defaults were chosen on this split",
                             **{k: round(val[k], 4) for k in (*KEYS, "precision", "recall", "f1")},
                             "n_true": val["n_true"], "n_pred": val["n_pred"]}
    if paper is not None:
        metrics["validation_paper_mask_rule"] = {
            "data": "same split and objects, masks by the paper's rule (object image > 0.1 x image mean)",
            **{k: round(paper[k], 4) for k in KEYS}}
    sample = stardist_sample()
    if sample is not None:
        tuned = KaizenModel(card, model.network, model.target_diameter, chosen)
        s = instance_scores([(sample[1], decompose(sample[0], tuned).labels())])
        metrics["stardist_sample"] = {"data": "stardist-sample img2d.tif vs mask2d.tif (125 nuclei), never used for "
                                              "training or tuning", **{k: round(s[k], 4) for k in KEYS}}
    extra = {**card.extra, "decompose": chosen.to_dict()}
    updated = dataclasses.replace(card, metrics=metrics, extra=extra)
    atomic_write_json(Path(card.folder) / CARD_FILE, updated.to_dict())
    print(f"card updated: {Path(card.folder) / CARD_FILE}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", default="bench", choices=("bench", "tune"))
    parser.add_argument("--model", default=None, help="model name or folder (default: the shipped kaizen-nuclei)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N validation images")
    parser.add_argument("--write", action="store_true", help="tune: store the choice in the model card")
    parser.add_argument("--groups-only", action="store_true", help="bench: skip the scaling and batching timings")
    parser.add_argument("--peer", type=Path, default=None,
                        help="bench: folder of a peer's validation predictions (bench/peers/stardist_peer.py --out)")
    parser.add_argument("--size-only", action="store_true", help="tune: only the size ladder and stop rule stage")
    parser.add_argument("--fine", action="store_true", help="tune: a narrower grid around the card's values")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    from app.pipelines import registry

    registry.pipelines()  # every pipeline registered, as in the app: other models' cards are then known, not skipped
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    (tune if args.action == "tune" else bench)(args)


if __name__ == "__main__":
    main()
