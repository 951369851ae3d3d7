"""StarDist2D peer for bench/kaizen.py: train from scratch on Kaizen's training split with Kaizen's time budget, predict validation.

Runs in its own virtual environment (make_stardist_env.sh: stardist + tensorflow-cpu are not app
dependencies), so it imports nothing from the app; the split rule is copied from
app/pipelines/kaizen/train.py (``is_validation``) and checked against the model card's text.

    bench/peers/.venv-stardist/bin/python bench/peers/stardist_peer.py --out bench/out/stardist [--budget-s S]

Writes ``OUT/model/`` (the StarDist model), ``OUT/pred/NAME.tif`` (uint16 labels of each
validation image) and ``OUT/peer.json`` (budget, steps, training seconds, seconds per image).
``bench/kaizen.py --peer OUT`` then prints StarDist beside Kaizen and Otsu per image group.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "nuclei-dsb2018"
CARD = REPO / "models" / "kaizen-nuclei" / "card.json"
SPLIT_TEXT = "int(sha256('kaizen-split-v1:' + name).hexdigest()[:8], 16) % 100 < 20"


def is_validation(name: str) -> bool:
    """Kaizen's fixed hash rule (app.pipelines.kaizen.train.is_validation)."""
    return int(hashlib.sha256(f"kaizen-split-v1:{name}".encode()).hexdigest()[:8], 16) % 100 < 20


def load(names: list[str]):
    import tifffile

    images = [tifffile.imread(DATA / "images" / f"{n}.tif") for n in names]
    images = [im[..., :3].mean(-1) if im.ndim == 3 else im for im in images]
    labels = [tifffile.imread(DATA / "labels" / f"{n}.tif") for n in names]
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="training wall seconds (default: the Kaizen card's training seconds)")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow threads (Kaizen's card was trained on 1 torch thread)")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    card = json.loads(CARD.read_text())
    if SPLIT_TEXT not in card["training"]["split_rule"]:
        raise SystemExit("the Kaizen card's split rule changed: update is_validation here")
    budget = args.budget_s or float(card["training"]["seconds"])
    names = sorted(p.stem for p in (DATA / "images").glob("*.tif"))
    train_names = [n for n in names if not is_validation(n)]
    val_names = [n for n in names if is_validation(n)]
    x, y = load(train_names)
    x = [normalize(im, 1, 99.8, axis=(0, 1)).astype(np.float32) for im in x]
    y = [fill_label_holes(lab) for lab in y]
    # StarDist's own validation during training: a few training images (Kaizen's validation split stays unseen)
    rng = np.random.default_rng(0)
    held = set(rng.choice(len(x), size=max(1, len(x) // 15), replace=False).tolist())
    xt = [a for i, a in enumerate(x) if i not in held]
    yt = [a for i, a in enumerate(y) if i not in held]
    xv = [a for i, a in enumerate(x) if i in held]
    yv = [a for i, a in enumerate(y) if i in held]
    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(256, 256), train_batch_size=4,
                      train_tensorboard=False,
                      use_gpu=False)
    model = StarDist2D(config, name="model", basedir=str(args.out))

    class Budget(tf.keras.callbacks.Callback):
        """Stop training once the wall-clock budget is spent (checked after every step)."""

        def __init__(self, seconds: float) -> None:
            super().__init__()
            self.seconds, self.started, self.steps = seconds, time.time(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if time.time() - self.started > self.seconds:
                self.model.stop_training = True

    def augment(img: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same geometric augmentation Kaizen's training uses (random flips and 90-degree turns)."""
        k = int(np.random.randint(4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
        if np.random.rand() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    model.prepare_for_training()
    budget_cb = Budget(budget)
    model.callbacks.append(budget_cb)
    started = time.time()
    model.train(xt, yt, validation_data=(xv, yv), augmenter=augment, epochs=10_000,
                steps_per_epoch=args.steps_per_epoch)
    train_s = time.time() - started
    model.optimize_thresholds(xv, yv)
    import tifffile

    (args.out / "pred").mkdir(parents=True, exist_ok=True)
    vx, _ = load(val_names)
    seconds = {}
    for name, image in zip(val_names, vx):
        t = time.perf_counter()
        labels, _ = model.predict_instances(normalize(image, 1, 99.8, axis=(0, 1)))
        seconds[name] = time.perf_counter() - t
        tifffile.imwrite(args.out / "pred" / f"{name}.tif", labels.astype(np.uint16))
    (args.out / "peer.json").write_text(json.dumps({
        "method": "StarDist2D from scratch (n_rays 32, grid 2x2, patch 256, batch 4, flips and 90-degree turns as Kaizen)",
        "budget_s": budget, "train_s": round(train_s, 1), "steps": budget_cb.steps,
        "train_images": len(xt), "stardist_val_images": len(xv), "threads": args.threads,
        "seconds_per_image": seconds}, indent=1))
    print(f"trained {budget_cb.steps} steps in {train_s:.0f} s (budget {budget:.0f} s); "
          f"{np.mean(list(seconds.values())):.3f} s/image on {len(val_names)} validation images")


if __name__ == "__main__":
    main()
