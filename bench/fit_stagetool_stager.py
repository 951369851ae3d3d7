"""Fit the shipped demo tubule model's composition stager on the truth of its training phantoms.

    .venv/bin/python bench/fit_stagetool_stager.py [MODEL_DIR]

Uses the truth (tubule stages, cell types and boxes) of the same phantom sections the tubule
model was trained on (seeds 1000-1047, 2048 px; see bench/train_stagetool_demo.sh), never the
test seeds (3000-3003) on which the card's test numbers are measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.core.testis_phantom import render_testis_truth, testis_layout
from app.pipelines.stagetool.composition import fit_docs_into_model

SEEDS, SIZE = range(1000, 1048), 2048


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "models" / "stagetool-tubules-demo"
    docs = [render_testis_truth(testis_layout(seed, SIZE), ()) for seed in SEEDS]
    stager, accuracy = fit_docs_into_model(docs, model, f"{len(SEEDS)} phantom sections (seeds "
                                                       f"{SEEDS[0]}-{SEEDS[-1]}, {SIZE} px), their truth")
    print(f"stager fitted on {stager.n_train} usable tubules of {len(SEEDS)} phantom sections "
          f"(training accuracy {accuracy:.3f}); written to {model}/card.json")


if __name__ == "__main__":
    main()
