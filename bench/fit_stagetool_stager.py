"""Fit the shipped demo tubule model's composition stager on its training phantoms.

    .venv/bin/python bench/fit_stagetool_stager.py [MODEL_DIR] [--work DIR] [--truth-cells]

By default the stager is fitted on the cells the shipped cell model *finds* in the training
phantoms (seeds 1000-1047, 2048 px; see bench/train_stagetool_demo.sh): the sections are written
to ``--work`` (about 0.8 GB), analysed as ``stagescope stagetool analyze`` does by default (one
pass, cells from score 0.4, one box per cell), and each found cell joins the annotated tubule
under it (``stagescope stagetool fit-stager --predictions``).  ``--truth-cells``
fits on the annotated cells instead (seconds, no analysis).  Never the validation (2000..) or test
seeds (3000..) on which the card's numbers are measured.  About 10 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.pipelines.stagetool.phantom import render_testis_truth, testis_layout, write_testis  # noqa: E402
from app.pipelines.stagetool.fitting import fit_docs_into_model, fit_into_model  # noqa: E402

SEEDS, SIZE = range(1000, 1048), 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=REPO / "models" / "stagetool-tubules-demo")
    parser.add_argument("--work", type=Path, default=None, help="folder for the training sections and results")
    parser.add_argument("--truth-cells", action="store_true", help="fit on the annotated cells (no analysis)")
    args = parser.parse_args()
    where = f"{len(SEEDS)} phantom sections (seeds {SEEDS[0]}-{SEEDS[-1]}, {SIZE} px)"
    if args.truth_cells:
        docs = [render_testis_truth(testis_layout(seed, SIZE), ()) for seed in SEEDS]
        stager, accuracy = fit_docs_into_model(docs, args.model, f"{where}, their truth")
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="stager-fit-"))
        stager, accuracy = fit_on_found_cells(work, args.model)
    print(f"stager fitted on {stager.n_train} usable tubules of {where} (training accuracy {accuracy:.3f}); "
          f"written to {args.model}/card.json")


def fit_on_found_cells(work: Path, model: Path = REPO / "models" / "stagetool-tubules-demo"):
    """Write the training phantoms (unless there), analyse them with the shipped models, fit on the found cells."""
    from app.core.jobs import ConsoleProgress, run
    from app.pipelines.stagetool.batch import analyze_paths
    from app.pipelines.stagetool.params import AnalyzeParams

    sections = work / "sections"
    if not (sections / "README.txt").exists():
        write_testis(sections, seed=SEEDS[0], count=len(SEEDS), size=SIZE, markers=())
    paths = sorted(sections.glob("testis_*.ome.tif"))
    results = work / "results"
    run(analyze_paths(paths, results, AnalyzeParams(stage_from="masks")), ConsoleProgress())
    data = (f"cells found by the shipped cell model 'stagetool-cells-demo' with the default analysis (one pass, cells "
            f"from score 0.4, one box per cell) in the {len(SEEDS)} training phantom sections (seeds {SEEDS[0]}-"
            f"{SEEDS[-1]}, {SIZE} px), each joined to the truth tubule under it, with the truth stages "
            f"(bench/fit_stagetool_stager.py)")
    return fit_into_model([sections], model, predictions=results, data=data)


if __name__ == "__main__":
    main()
