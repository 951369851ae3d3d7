"""Whole-section Stagetool analysis: tiles -> tubules with stages, cells with types, antigen data.

Flow (DESIGN.md "Stagetool data flow"), streamed tile by tile so peak memory does not grow with
the section (only the low-resolution overview and tubule map do, by 1/map_scale²):

1. overview: the DAPI channel reduced by ``map_scale`` (block means, read in strips) gives the
   intensity range for normalisation and a tissue mask; tiles without tissue are skipped.
2. tubule pass: the tubule model on tiles with overlap; masks go to the section-wide map
   resolution, are grouped per tubule and staged by weighted majority (:mod:`.merge`).
3. cell pass: the cell model on tiles with overlap, once (``tta="off"``, the default: one box per
   cell across types, 4x faster than the paper's flow on an 8000 px phantom), at 0/90/180/270
   degrees (``"full"``, the paper), or rotated only where the single pass is uncertain
   (``"adaptive"``: no faster with the demo models); boxes are
   rotated back and merged by majority vote; each tile keeps the cells whose centre is in its
   core, doubles on seams are removed, each cell gets the tubule that holds its centre, and the
   antibody channels are measured while the tile is in memory (:mod:`.antigen`).
4. results: ``predictions.json`` (raw), then :func:`write_section_outputs` applies the edits and
   writes ``objects.json``, ``summary.json``, ``tubules.csv``, ``cells.csv`` and the workbook.

Models are loaded by :mod:`.loading`, the section is read and tiled by :mod:`.section`; this module
drives the passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app import __version__
from app.core.annotations import mask_to_polygons
from app.core.errors import ImageError, UserError
from app.core.images import open_image
from app.core.jobs import Job, Progress
from app.core.project_edit import apply_entry_metadata
from app.core.results import write_objects
from app.core.tiles import rotate90, unrotate_boxes
from app.pipelines.stagetool import antigen as antigen_mod
from app.pipelines.stagetool import composition, merge
from app.pipelines.stagetool.antigen import Antibody
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.layout import OBJECTS_FILE, PIPELINE, PREDICTIONS_FILE, SUMMARY_FILE  # noqa: F401 (predict.X kept)
from app.pipelines.stagetool.loading import (  # noqa: F401  (predict.load_model etc. kept)
    DEMO_MODELS, LoadedModel, detect, load_model, prepare, stager_card, stager_of,
)
from app.pipelines.stagetool.models import set_inference
from app.pipelines.stagetool.params import AnalyzeParams
from app.pipelines.stagetool.section import (  # noqa: F401  (predict.reduce_block etc. kept)
    intensity_range, model_tile, read_region, reduce_block, section_overview, tile_windows, tissue_fraction,
    tissue_mask, window_of, window_side,
)

# -------------------------------------------------------------------------------------- tubules


def _pixel_for(image: Any, params: AnalyzeParams) -> float | None:
    """The section pixel size tiles are matched to the model's at, or None to keep the card's downsample."""
    return image.info.pixel_size_um if params.match_pixel_size else None


def _scale_note(image: Any, model: LoadedModel, config: Any) -> str:
    """Tells the user when tiles are resampled to the model's pixel size (empty when they are not)."""
    if config.downsample == model.config.downsample:
        return ""
    return (f"; section at {image.info.pixel_size_um:g} µm per pixel is seen at the model's "
            f"{model.card.pixel_size_um:g} µm (tiles resampled by {config.downsample / model.config.downsample:.2f})")


def _mask_to_map(mask: np.ndarray, window: tuple[int, int, int, int], downsample: float, map_scale: int,
                 map_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """A model-resolution mask resampled (nearest) onto the section's map grid; returns (mask, origin)."""
    y0, x0 = window[0], window[1]
    h, w = mask.shape
    rows0 = max(0, math.ceil((y0 + 0.5 * downsample) / map_scale - 0.5)) if y0 > 0 else 0
    cols0 = max(0, math.ceil((x0 + 0.5 * downsample) / map_scale - 0.5)) if x0 > 0 else 0
    rows1 = min(map_shape[0], math.ceil((y0 + h * downsample) / map_scale))
    cols1 = min(map_shape[1], math.ceil((x0 + w * downsample) / map_scale))
    if rows1 <= rows0 or cols1 <= cols0:
        return np.zeros((0, 0), bool), (rows0, cols0)
    ys = ((np.arange(rows0, rows1) + 0.5) * map_scale - y0) // downsample
    xs = ((np.arange(cols0, cols1) + 0.5) * map_scale - x0) // downsample
    ys = np.clip(ys.astype(np.int64), 0, h - 1)
    xs = np.clip(xs.astype(np.int64), 0, w - 1)
    return mask[np.ix_(ys, xs)], (rows0, cols0)


def tubule_pass(image: Any, channel: int, model: LoadedModel, params: AnalyzeParams, stats: tuple[float, float],
                tissue: np.ndarray, map_scale: int, where: str) -> Job[tuple[list[merge.Tubule], np.ndarray, dict]]:
    """Tile masks of the whole section, merged into tubules; returns (tubules, tubule map, tile info)."""
    height, width = image.info.height, image.info.width
    map_shape = (-(-height // map_scale), -(-width // map_scale))
    config = prepare(model, params.tubule_tile, params.tubule_score, _pixel_for(image, params))
    tiles = tile_windows(height, width, config, params.overlap)
    masks: list[merge.TileMask] = []
    skipped = 0
    todo = []
    for tile in tiles:
        window = window_of(tile, config)
        if params.skip_background and tissue_fraction(tissue, window, map_scale) < params.min_tissue:
            skipped += 1
            continue
        todo.append(window)
    yield Progress("tubules", 0, len(todo), f"{skipped} of {len(tiles)} tiles without tissue skipped"
                   + _scale_note(image, model, config))
    for start in range(0, len(todo), params.batch_size):
        windows = todo[start:start + params.batch_size]
        inputs = [model_tile(image, channel, w, config, stats, where) for w in windows]
        for number, (window, out) in enumerate(zip(windows, detect(model, inputs)), start=start):
            for mask, label, score in zip(out["masks"], out["labels"], out["scores"]):
                if score < params.tubule_score:
                    continue
                on_map, origin = _mask_to_map(mask, window, config.downsample, map_scale, map_shape)
                packed = merge.TileMask.from_mask(on_map, origin, int(label), float(score), tile=number)
                if packed is not None:
                    masks.append(packed)
        yield Progress("tubules", min(start + params.batch_size, len(todo)), len(todo))
    tubules = merge.merge_tubules(masks, len(STAGES))
    pixel = image.info.pixel_size_um
    min_area = params.min_tubule_area_um2 / (pixel * pixel) if pixel else params.min_tubule_area_um2
    tubules = [t for t in tubules if t.area * map_scale * map_scale >= min_area]
    for number, tubule in enumerate(tubules, start=1):
        tubule.id = number
    label_map = merge.paint_tubules(tubules, map_shape)
    info = {"tubule_tiles": len(tiles), "tubule_tiles_analysed": len(todo), "tubule_masks": len(masks),
            "tubule_tile_px": window_side(config), "tubule_step": round(float(config.downsample), 4)}
    return tubules, label_map, info


def tubule_objects(tubules: list[merge.Tubule], map_scale: int) -> list[dict[str, Any]]:
    """Result objects for tubules: stage, score, weights, polygon/box/centroid in section pixels."""
    objects = []
    for t in tubules:
        y0, x0, y1, x1 = t.box
        polygons = mask_to_polygons(t.mask, tolerance=0.5, offset=(y0, x0))
        polygon = max(polygons, key=len) if polygons else np.zeros((0, 2))
        polygon = [[round(float(px) * map_scale, 1), round(float(py) * map_scale, 1)] for px, py in polygon]
        ys, xs = np.nonzero(t.mask)
        objects.append({
            "id": t.id, "class": STAGES[t.label], "score": round(t.score, 4),
            "box": [x0 * map_scale, y0 * map_scale, x1 * map_scale, y1 * map_scale],
            "polygon": polygon,
            "centroid": [float((ys.mean() + y0 + 0.5) * map_scale), float((xs.mean() + x0 + 0.5) * map_scale)],
            "area_px": int(t.area * map_scale * map_scale),
            "stage_weights": {s: round(float(w), 4) for s, w in zip(STAGES, t.weights)},
            "n_masks": len(t.members), "excluded": False,
        })
    return objects


# ---------------------------------------------------------------------------------------- cells


def _rotations(model: LoadedModel, tiles: list[np.ndarray]) -> list[list[merge.Detections]]:
    """Detections of the 90/180/270-degree rotations of each tile, rotated back into the tile frame."""
    per_tile: list[list[merge.Detections]] = [[] for _ in tiles]
    if not tiles:
        return per_tile
    set_inference(model.net, tiles[0].shape[0], model.net.roi_heads.score_thresh, model.config.kind)
    for k in (1, 2, 3):
        outputs = detect(model, [np.ascontiguousarray(rotate90(t, k)) for t in tiles])
        for i, out in enumerate(outputs):
            boxes = unrotate_boxes(out["boxes"], k, tiles[i].shape) if len(out["boxes"]) else out["boxes"]
            per_tile[i].append(merge.Detections(np.asarray(boxes, np.float32).reshape(-1, 4), out["labels"],
                                                out["scores"]))
    return per_tile


def _vote(single: merge.Detections, others: list[merge.Detections], params: AnalyzeParams) -> merge.Detections:
    """Majority vote of one pass (cut at ``cell_score``) and its rotated passes (cut the same way)."""
    passes = [single] + [o.select(o.scores >= params.cell_score) for o in others]
    return merge.tta_vote(passes, min_votes=params.min_votes)


def adaptive_blocks(tile: np.ndarray, raw: merge.Detections, params: AnalyzeParams) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the blocks of a tile whose single pass holds an uncertain cell."""
    doubtful = (raw.scores >= params.adaptive_low) & (raw.scores < params.adaptive_high)
    if not doubtful.any():
        return []
    block = params.adaptive_block
    centres = merge.box_centres(raw.boxes[doubtful])
    last = max(0, (tile.shape[0] - 1) // block)
    rows = np.clip(centres[:, 0] // block, 0, last).astype(int)
    cols = np.clip(centres[:, 1] // block, 0, last).astype(int)
    return sorted({(int(r) * block, int(c) * block) for r, c in zip(rows, cols)})


def adaptive_vote(model: LoadedModel, tile: np.ndarray, raw: merge.Detections, params: AnalyzeParams,
                  margin: int = 32) -> tuple[merge.Detections, int]:
    """Rotations only around uncertain cells; returns the tile's cells and the number of blocks rotated.

    Blocks of ``adaptive_block`` px holding a cell with a middling single-pass score are predicted
    again at 90/180/270 degrees with ``margin`` px of context and voted like full TTA; cells of
    the other blocks keep the single pass.
    """
    block = params.adaptive_block
    single = raw.select(raw.scores >= params.cell_score)
    single = merge.Detections(single.boxes, single.labels, single.scores, np.ones(len(single), np.int64))
    corners = adaptive_blocks(tile, raw, params)
    if not corners:
        return single, 0
    side = block + 2 * margin
    padded = np.pad(tile, ((margin, margin + side), (margin, margin + side)))
    windows = [np.ascontiguousarray(padded[y:y + side, x:x + side]) for y, x in corners]
    rotated = _rotations(model, windows)
    set_inference(model.net, tile.shape[0], model.net.roi_heads.score_thresh, model.config.kind)
    centres = merge.box_centres(single.boxes)
    keep_single = np.ones(len(single), bool)
    voted = []
    for (y, x), others in zip(corners, rotated):
        core = (y, x, y + block, x + block)
        near = (y - margin // 2, x - margin // 2, y + block + margin // 2, x + block + margin // 2)
        keep_single &= ~merge.inside(centres, core)
        shifted = [o.shifted(x - margin, y - margin) for o in others]
        shifted = [o.select(merge.inside(merge.box_centres(o.boxes), near)) for o in shifted]
        cells = _vote(single.select(merge.inside(centres, near)), shifted, params)
        voted.append(cells.select(merge.inside(merge.box_centres(cells.boxes), core)))
    return merge.Detections.concat([single.select(keep_single), *voted]), len(corners)


def _select(dets: dict[str, np.ndarray], threshold: float) -> merge.Detections:
    keep = dets["scores"] >= threshold
    return merge.Detections(dets["boxes"][keep].astype(np.float32), dets["labels"][keep].astype(np.int64),
                            dets["scores"][keep].astype(np.float32))


def cell_pass(image: Any, channel: int, model: LoadedModel, params: AnalyzeParams, stats: tuple[float, float],
              tissue: np.ndarray, map_scale: int, antibodies: Sequence[tuple[Antibody, int]],
              where: str) -> Job[tuple[merge.Detections, np.ndarray, np.ndarray, dict]]:
    """All cells of the section: (detections in section px, antigen means, antigen q, tile info)."""
    height, width = image.info.height, image.info.width
    first_cut = {"off": params.single_score, "adaptive": params.adaptive_low}.get(params.tta, params.cell_score)
    config = prepare(model, params.cell_tile, first_cut, _pixel_for(image, params))
    tiles = tile_windows(height, width, config, params.overlap)
    todo = []
    skipped = 0
    for tile in tiles:
        window = window_of(tile, config)
        if params.skip_background and tissue_fraction(tissue, window, map_scale) < params.min_tissue:
            skipped += 1
            continue
        todo.append((tile, window))
    yield Progress("cells", 0, len(todo), f"{skipped} of {len(tiles)} tiles without tissue skipped; rotations: {params.tta}")
    kept: list[merge.Detections] = []
    seams: list[np.ndarray] = []
    means: list[np.ndarray] = []
    quants: list[np.ndarray] = []
    rotated_tiles = rotated_blocks = 0
    scale = float(config.downsample)
    for start in range(0, len(todo), params.batch_size):
        batch = todo[start:start + params.batch_size]
        inputs = [model_tile(image, channel, w, config, stats, where) for _, w in batch]
        raw = [_select(d, first_cut) for d in detect(model, inputs)]
        if params.tta == "full":
            merged = [_vote(single, others, params) for single, others in zip(raw, _rotations(model, inputs))]
            rotated_tiles += len(batch)
            set_inference(model.net, config.tile_size, model.net.roi_heads.score_thresh, config.kind)
        elif params.tta == "adaptive":
            merged = []
            for tile_input, single in zip(inputs, raw):
                cells, blocks = adaptive_vote(model, tile_input, single, params)
                merged.append(cells)
                rotated_tiles += blocks > 0
                rotated_blocks += blocks
        else:
            merged = [merge.one_per_cell(cells) for cells in raw]
        for (tile, window), cells in zip(batch, merged):
            cells = merge.Detections(cells.boxes * scale, cells.labels, cells.scores,
                                     cells.votes if cells.votes is not None else np.ones(len(cells), np.int64))
            cells = cells.shifted(window[1], window[0])
            core = tuple(int(v) for v in tile.core)
            centres = merge.box_centres(cells.boxes)
            cells = cells.select(np.asarray(tile.owns(centres[:, 0], centres[:, 1]), bool).reshape(-1))
            kept.append(cells)
            seams.append(merge.crosses(cells.boxes, core))
            m, q = _measure(image, antibodies, window, cells.boxes, params.positive_fraction, where)
            means.append(m)
            quants.append(q)
        yield Progress("cells", min(start + params.batch_size, len(todo)), len(todo))
    n_ab = len(antibodies)
    cells = merge.Detections.concat(kept)
    mean_arr = np.concatenate(means) if means else np.zeros((0, n_ab))
    q_arr = np.concatenate(quants) if quants else np.zeros((0, n_ab))
    seam = np.concatenate(seams) if seams else np.zeros(0, bool)
    before = len(cells)
    keep_index = np.arange(len(cells))
    if len(cells):
        deduped = merge.dedupe_seams(merge.Detections(cells.boxes, cells.labels, cells.scores, keep_index), seam)
        keep_index = deduped.votes
        cells = cells.select(keep_index)
        mean_arr, q_arr = mean_arr[keep_index], q_arr[keep_index]
    info = {"cell_tile_px": window_side(config), "cell_step": round(float(config.downsample), 4), "cell_tiles": len(tiles),
            "cell_tiles_analysed": len(todo), "cell_tiles_rotated": rotated_tiles,
            "cell_blocks_rotated": rotated_blocks, "adaptive_block_px": round(params.adaptive_block * config.downsample),
            "seam_duplicates_removed": before - len(cells)}
    return cells, mean_arr, q_arr, info


def _measure(image: Any, antibodies: Sequence[tuple[Antibody, int]], window: tuple[int, int, int, int],
             boxes: np.ndarray, fraction: float, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Antigen means and q values (cells x antibodies) of the cells kept by one tile."""
    means = np.full((len(boxes), len(antibodies)), np.nan)
    quants = np.full((len(boxes), len(antibodies)), np.nan)
    if not len(boxes) or not antibodies:
        return means, quants
    for j, (_, index) in enumerate(antibodies):
        region = read_region(image, index, window, where)
        means[:, j], quants[:, j] = antigen_mod.measure_cells(region, boxes, (window[0], window[1]), fraction)
    return means, quants


# ---------------------------------------------------------------------------------------- section


def resolve_channels(image: Any, dapi: str | int, antibodies: Sequence[Antibody], where: str) -> tuple[int, list[tuple[Antibody, int]]]:
    """Channel indices of DAPI and each antibody; a missing one is an ImageError listing what exists."""
    info = image.info

    def index(channel: str | int, what: str) -> int:
        try:
            return int(image.channel_index(channel))
        except (UserError, KeyError, IndexError, ValueError) as error:
            names = ", ".join(f"{i}={n}" for i, n in enumerate(info.channel_names)) or f"{info.n_channels} unnamed"
            raise ImageError(f"{where}: has no channel {channel!r} for {what} (channels: {names})") from error

    return index(dapi, "DAPI"), [(ab, index(ab.channel, f"antibody {ab.name}")) for ab in antibodies]


def is_synthetic(image: Any) -> bool:
    """Whether the file says it is a Stagescope phantom (its metadata mentions a phantom / synthetic data)."""
    text = " ".join(str(v) for v in vars(image.info).values() if isinstance(v, str)) if hasattr(image.info, "__dict__") else ""
    path = Path(image.info.path)
    readme = path.parent / "README.txt"
    hint = text.lower() + " " + path.name.lower()
    if readme.exists():
        try:
            hint += " " + readme.read_text(errors="ignore")[:2000].lower()
        except OSError:
            pass
    return "phantom" in hint or "synthetic" in hint


def whole_section_view(image: Any, channel: int, params: AnalyzeParams, where: str
                       ) -> tuple[int, tuple[float, float], np.ndarray]:
    """The whole-section step: overview scale, normalisation range and tissue mask (overview pixels)."""
    height, width = image.info.height, image.info.width
    map_scale = max(params.map_scale, math.ceil(math.sqrt(height * width / 64e6)))
    overview = section_overview(image, channel, map_scale, where)
    return map_scale, intensity_range(overview), tissue_mask(overview)


def find_cells(path: str | Path, cell_model: LoadedModel, params: AnalyzeParams | None = None,
               channel: int | str = 0, pixel_size_um: float | None = None) -> Job[merge.Detections]:
    """The cells a cell model finds in a whole section (section px), as an analysis would find them.

    No tubule pass and no antibody channels: used to refit a stager on a new cell model's own cells
    (:func:`.fitting.refit_for_cell_model`).
    """
    params = params or AnalyzeParams()
    with open_image(path) as image:
        apply_entry_metadata(image, {"pixel_size_um": pixel_size_um} if pixel_size_um else None)
        where = str(path)
        index = image.channel_index(channel)
        map_scale, stats, tissue = whole_section_view(image, index, params, where)
        cells, _, _, _ = yield from cell_pass(image, index, cell_model, params, stats, tissue, map_scale, (), where)
    return cells


def analyze_section(path: str | Path, out_dir: str | Path, tubule_model: LoadedModel, cell_model: LoadedModel,
                    params: AnalyzeParams | None = None, name: str | None = None,
                    synthetic: bool | None = None, metadata: dict | None = None) -> Job[dict]:
    """Analyse one section and write ``predictions.json`` into ``out_dir``; returns the objects document.

    DAPI and antibody channels come from ``params``; ``synthetic`` None = ask the file; ``metadata``
    (pixel size, channel names set in the project) wins over the file's.
    """
    params = params or AnalyzeParams()
    params.validate()
    antibodies, dapi = params.antibody_list(), params.dapi_channel()
    path, out_dir = Path(path), Path(out_dir)
    name = name or section_name(path)
    timing: dict[str, float] = {}
    start = time.monotonic()
    with open_image(path) as image:
        apply_entry_metadata(image, metadata)
        where = str(path)
        dapi_index, channels = resolve_channels(image, dapi, antibodies, where)
        height, width = image.info.height, image.info.width
        yield Progress("overview", 0, 1, f"{name}: {width} x {height} px")
        map_scale, stats, tissue = whole_section_view(image, dapi_index, params, where)
        timing["overview"] = time.monotonic() - start
        yield Progress("overview", 1, 1)
        t0 = time.monotonic()
        tubules, label_map, tubule_info = yield from tubule_pass(image, dapi_index, tubule_model, params, stats,
                                                                 tissue, map_scale, where)
        timing["tubules"] = time.monotonic() - t0
        t0 = time.monotonic()
        cells, means, quants, cell_info = yield from cell_pass(image, dapi_index, cell_model, params, stats, tissue,
                                                               map_scale, channels, where)
        timing["cells"] = time.monotonic() - t0
        synthetic = is_synthetic(image) if synthetic is None else synthetic
        pixel_size = image.info.pixel_size_um
    centres = merge.box_centres(cells.boxes)
    tubule_ids = merge.assign_cells(centres, label_map, map_scale)
    antibody_meta = []
    for j, (ab, index) in enumerate(channels):
        threshold, source = ab.threshold, "given by the user"
        if threshold is None:
            threshold = antigen_mod.suggest_threshold(means[:, j])
            source = "suggested: Otsu threshold of the per-cell mean intensities"
            threshold = None if not math.isfinite(threshold) else round(threshold, 3)
        antibody_meta.append({"name": ab.name, "channel": ab.channel, "channel_index": index,
                              "threshold": threshold, "threshold_source": source})
    cell_objects = []
    for i in range(len(cells)):
        x0, y0, x1, y1 = (round(float(v), 2) for v in cells.boxes[i])
        obj = {"id": i + 1, "class": CELL_TYPES[int(cells.labels[i])], "score": round(float(cells.scores[i]), 4),
               "box": [x0, y0, x1, y1], "centroid": [round(float(centres[i, 0]), 2), round(float(centres[i, 1]), 2)],
               "tubule_id": int(tubule_ids[i]) or None, "votes": int(cells.votes[i]) if cells.votes is not None else 1}
        if channels:
            obj["antigen"] = {ab.name: {"mean": _round(means[i, j]), "q": _round(quants[i, j])}
                              for j, (ab, _) in enumerate(channels)}
        cell_objects.append(obj)
    timing["total"] = round(time.monotonic() - start, 3)
    meta = {
        "image_path": str(path), "shape": [height, width], "pixel_size_um": pixel_size, "synthetic": synthetic,
        "dapi_channel": dapi, "models": {"tubules": tubule_model.reference(), "cells": cell_model.reference()},
        "params": params.to_dict(), "antibodies": antibody_meta, "map_scale": map_scale,
        "intensity_range": list(stats), "tiles": {**tubule_info, **cell_info},
        "stager_model": getattr(stager_card(tubule_model, cell_model), "name", None),
        "timing_s": {k: round(v, 3) for k, v in timing.items()}, "app_version": __version__,
    }
    layers = {"tubules": tubule_objects(tubules, map_scale), "cells": cell_objects}
    composition.stage_tubules(layers["tubules"], cell_objects, stager_of(tubule_model, cell_model),
                               params.stage_from)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_objects(out_dir / PREDICTIONS_FILE, name, PIPELINE, layers, meta)
    yield Progress("write", 1, 1, f"{name}: {len(tubules)} tubules, {len(cells)} cells")
    return {"schema_version": 1, "image": name, "pipeline": PIPELINE, "layers": layers, "meta": meta}


def _round(value: float, digits: int = 3) -> float | None:
    return None if not math.isfinite(float(value)) else round(float(value), digits)


def section_name(path: Path) -> str:
    """A section's name from its file name (multi-part suffixes such as .ome.tif removed, a scene kept)."""
    from app.core.formats import image_stem

    return image_stem(path)

