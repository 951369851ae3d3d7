"""Fit the shipped demo tubule model's composition stager on the truth of its training phantoms.

    .venv/bin/python bench/fit_stagetool_stager.py [MODEL_DIR]

Uses the truth (tubule stages, cell types and boxes) of the same phantom sections the tubule
model was trained on (seeds 1000-1047, 2048 px; see bench/train_stagetool_demo.sh), never the
test seeds (3000-3003) on which the card's test numbers are measured.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from app.core.atomic import atomic_write_json
from app.core.testis_phantom import TRUTH_SUFFIX, render_testis_truth, testis_layout
from app.pipelines.stagetool.composition import fit_into_model

SEEDS, SIZE = range(1000, 1048), 2048


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "models" / "stagetool-tubules-demo"
    with tempfile.TemporaryDirectory() as folder:
        for seed in SEEDS:
            atomic_write_json(Path(folder) / f"seed{seed}{TRUTH_SUFFIX}", render_testis_truth(testis_layout(seed, SIZE), ()))
        stager, accuracy = fit_into_model([folder], model)
    print(f"stager fitted on {stager.n_train} usable tubules of {len(SEEDS)} phantom sections "
          f"(training accuracy {accuracy:.3f}); written to {model}/card.json")


if __name__ == "__main__":
    main()
