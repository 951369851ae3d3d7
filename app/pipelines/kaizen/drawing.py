"""Kaizen's object stack (``objects.npz``) as viewer overlays: a generated-objects picture and mask outlines.

Kaizen's own drawing, kept in its folder (issue 13): no Qt, so both run on the viewer's results
reader thread; the GUI passes its theme colour.
"""

from __future__ import annotations

import numpy as np



def generated_objects_rgba(stack: dict[str, np.ndarray], colour: str = "#ff4fd8") -> tuple[np.ndarray, tuple]:
    """Kaizen's generated object images (an ``objects.npz`` stack) summed in place as an RGBA picture.

    Returns the picture and its rect (x, y, w, h) in image pixels; alpha follows the intensity so
    the section shows through where nothing was generated.  No Qt: runs on the reader thread.
    """
    images, offsets = stack["images"], stack["offsets"]
    shapes = stack.get("shapes", np.array([im.shape for im in images]))
    if not len(images):
        return np.zeros((1, 1, 4), np.uint8), (0.0, 0.0, 1.0, 1.0)
    height = int(max(o[0] + s[0] for o, s in zip(offsets, shapes)))
    width = int(max(o[1] + s[1] for o, s in zip(offsets, shapes)))
    total = np.zeros((height, width), np.float32)
    for image, (y, x), (h, w) in zip(images, offsets, shapes):
        y0, x0 = max(int(y), 0), max(int(x), 0)
        crop = image[y0 - int(y): int(h), x0 - int(x): int(w)]
        total[y0: y0 + crop.shape[0], x0: x0 + crop.shape[1]] += crop
    top = float(np.percentile(total[total > 0], 99.5)) if (total > 0).any() else 1.0
    level = np.clip(total / max(top, 1e-12), 0, 1)
    text = colour.lstrip("#")
    rgb = [int(text[i: i + 2], 16) for i in (0, 2, 4)]
    rgba = np.empty((height, width, 4), np.uint8)
    for channel, value in enumerate(rgb):
        rgba[..., channel] = (level * value).astype(np.uint8)
    rgba[..., 3] = (level * 255).astype(np.uint8)
    return rgba, (0.0, 0.0, float(width), float(height))


def outline_objects_from_stack(doc: dict, stack: dict[str, np.ndarray], tolerance: float = 0.5) -> int:
    """Give objects without a ``polygon`` the outline of their mask in a Kaizen object stack (by id).

    Kaizen's objects.json holds boxes; its ``objects.npz`` holds each object's whole mask (overlaps
    kept), so the viewer draws outlines rather than boxes.  Changes ``doc`` in place; returns how
    many objects got an outline.  No Qt: runs on the reader thread.
    """
    from app.core.annotations import mask_to_polygons

    if "masks" not in stack or "offsets" not in stack:
        return 0
    ids = stack.get("ids", np.arange(1, len(stack["masks"]) + 1))
    shapes = stack.get("shapes", np.array([m.shape for m in stack["masks"]]))
    by_id = {int(i): k for k, i in enumerate(ids)}
    count = 0
    for objects in (doc.get("layers") or {}).values():
        for obj in objects:
            k = by_id.get(int(obj.get("id", -1))) if not obj.get("polygon") else None
            if k is None:
                continue
            h, w = (int(v) for v in shapes[k])
            rings = mask_to_polygons(stack["masks"][k][:h, :w], tolerance, tuple(int(v) for v in stack["offsets"][k]))
            if rings:
                obj["polygon"] = max(rings, key=len).tolist()
                count += 1
    return count
