"""The command line end to end: exit codes, JSON output, user errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.morphology import disk, erosion

from app.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help(capsys):
    from app.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    for name in subparsers.choices:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert "usage:" in capsys.readouterr().out


def test_evaluate_instances_identical_masks_is_perfect(capsys, shared_data):
    mask = shared_data / "stardist-sample" / "mask2d.tif"
    code, out, _ = run_cli(capsys, "evaluate", "instances", mask, mask, "--json")
    assert code == 0
    scores = json.loads(out)
    for key in ("AP50", "AP60", "AP70", "AP80", "AP90", "precision", "recall", "f1"):
        assert scores[key] == pytest.approx(1.0)
    assert scores["n_images"] == 1


def test_evaluate_instances_reads_a_results_folder(capsys, shared_data, tmp_path):
    """A lab scores `kaizen segment`'s output folder (<out>/<image>/kaizen.tif) against its truth folder as it is."""
    truth = tifffile.imread(shared_data / "stardist-sample" / "mask2d.tif")
    (tmp_path / "truth").mkdir()
    tifffile.imwrite(tmp_path / "truth" / "a.tif", truth)
    tifffile.imwrite(tmp_path / "truth" / "b.tif", truth)
    for name, pred in (("a", truth), ("b", np.where(truth % 2 == 1, truth, 0))):  # b: half the nuclei found
        (tmp_path / "out" / name).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "out" / name / "kaizen.tif", pred)
        (tmp_path / "out" / name / "task.json").write_text("{}")
    code, out, err = run_cli(capsys, "evaluate", "instances", tmp_path / "truth", tmp_path / "out", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["n_images"] == 2
    n = len(np.unique(truth)) - 1
    found = int((np.unique(truth)[1:] % 2 == 1).sum())
    assert scores["recall"] == pytest.approx((n + found) / (2 * n))
    assert scores["precision"] == pytest.approx(1.0)


def test_evaluate_instances_eroded_copy(capsys, shared_data, tmp_path):
    """Each nucleus eroded by a disk(2): IoU with its original = shrunk area / area, so AP falls at high IoU."""
    truth = tifffile.imread(shared_data / "stardist-sample" / "mask2d.tif")
    eroded = np.zeros_like(truth)
    ious = []
    for label in np.unique(truth)[1:]:
        obj = truth == label
        small = erosion(obj, disk(2))
        eroded[small] = label
        ious.append(small.sum() / obj.sum())  # small is inside obj: IoU = |small| / |obj|
    tifffile.imwrite(tmp_path / "eroded.tif", eroded)
    code, out, _ = run_cli(capsys, "evaluate", "instances", shared_data / "stardist-sample" / "mask2d.tif",
                           tmp_path / "eroded.tif", "--json")
    assert code == 0
    scores = json.loads(out)
    ious = np.array(ious)
    n = len(ious)
    for key, threshold in (("AP50", 0.5), ("AP70", 0.7), ("AP90", 0.9)):
        tp = int((ious >= threshold).sum())  # a nucleus fully eroded away counts as missed (FN)
        n_pred = int(sum(1 for label in np.unique(eroded)[1:]))
        expected = tp / (tp + (n_pred - tp) + (n - tp))
        assert scores[key] == pytest.approx(expected), key
    assert scores["AP90"] < scores["AP50"]


def test_evaluate_folders_are_matched_by_name(capsys, tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir(), pred_dir.mkdir()
    a = np.zeros((20, 20), np.uint16)
    a[2:8, 2:8] = 1
    a[10:18, 10:18] = 2
    tifffile.imwrite(truth_dir / "one.tif", a)
    tifffile.imwrite(pred_dir / "one.tif", a)
    b = a.copy()
    b[b == 2] = 0  # second object missed: TP 1, FN 1 -> AP 0.5
    tifffile.imwrite(truth_dir / "two.tif", a)
    tifffile.imwrite(pred_dir / "two.tif", b)
    code, out, _ = run_cli(capsys, "evaluate", "instances", truth_dir, pred_dir, "--json")
    assert code == 0
    scores = json.loads(out)
    assert scores["n_images"] == 2
    assert scores["AP50"] == pytest.approx(3 / 4)  # pooled: TP 3, FP 0, FN 1


def test_evaluate_missing_prediction_is_a_user_error(capsys, tmp_path):
    (tmp_path / "t").mkdir(), (tmp_path / "p").mkdir()
    tifffile.imwrite(tmp_path / "t" / "a.tif", np.zeros((4, 4), np.uint16))
    tifffile.imwrite(tmp_path / "p" / "b.tif", np.zeros((4, 4), np.uint16))
    code, _, err = run_cli(capsys, "evaluate", "instances", tmp_path / "t", tmp_path / "p")
    assert code == 2
    assert "a.tif" in err and "Traceback" not in err


def test_evaluate_shape_mismatch_names_both_shapes(capsys, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.uint16))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((5, 4), np.uint16))
    code, _, err = run_cli(capsys, "evaluate", "instances", tmp_path / "a.tif", tmp_path / "b.tif")
    assert code == 2
    assert "(5, 4)" in err and "(4, 4)" in err


def test_evaluate_semantic(capsys, tmp_path):
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1]], np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", truth)
    tifffile.imwrite(tmp_path / "p.tif", pred)
    code, out, _ = run_cli(capsys, "evaluate", "semantic", tmp_path / "t.tif", tmp_path / "p.tif", "--classes", "2", "--json")
    assert code == 0
    scores = json.loads(out)
    assert scores["pixel_accuracy"] == pytest.approx(7 / 8)
    # class 0: 3 of 4 right, IoU 3/4; class 1: 4 of 4 right, IoU 4/5
    assert scores["mean_accuracy"] == pytest.approx((3 / 4 + 1) / 2)
    assert scores["mean_iou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert scores["fw_iou"] == pytest.approx(0.5 * 3 / 4 + 0.5 * 4 / 5)


def test_info_on_every_real_image(capsys, shared_data):
    files = sorted(p for p in shared_data.rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".png"))
    # all of stardist + brightfield, a sample of the 1082 nuclei-dsb2018 files
    nuclei = [p for p in files if "nuclei-dsb2018" in p.parts]
    others = [p for p in files if "nuclei-dsb2018" not in p.parts]
    chosen = others + nuclei[:: max(1, len(nuclei) // 25)]
    code, out, err = run_cli(capsys, "info", *chosen, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == len(chosen)
    for row in rows:
        assert row["height"] > 0 and row["width"] > 0
    sample = next(r for r in rows if r["path"].endswith("img2d.tif"))
    assert (sample["height"], sample["width"], sample["dtype"]) == (512, 512, "uint16")


def test_info_on_truncated_tiff_exits_2_with_message(capsys, shared_data, tmp_path):
    data = (shared_data / "brightfield-sephace" / "set1" / "fl.tif").read_bytes()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(data[: len(data) // 3])
    code, _, err = run_cli(capsys, "info", broken)
    assert code == 2
    assert "broken.tif" in err and "Traceback" not in err


def test_info_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", tmp_path / "nope.tif")
    assert code == 2 and "nope.tif" in err


def test_project_commands(capsys, tmp_path, shared_data):
    folder = tmp_path / "proj"
    assert run_cli(capsys, "project", "new", folder, "--name", "P")[0] == 0
    code, out, _ = run_cli(capsys, "project", "add", folder, shared_data / "stardist-sample" / "img2d.tif", "--group", "g1")
    assert code == 0 and "img2d" in out
    code, out, _ = run_cli(capsys, "project", "list", folder, "--json")
    listing = json.loads(out)
    assert listing["name"] == "P"
    assert [i["group"] for i in listing["images"]] == ["g1"]
    # a second `new` on the same folder must not overwrite it
    code, _, err = run_cli(capsys, "project", "new", folder)
    assert code == 2
    assert json.loads((folder / "project.json").read_text())["name"] == "P"


@pytest.mark.parametrize("kind", ["nuclei", "brightfield"])
def test_phantom_command_writes_images_truth_and_readme(capsys, tmp_path, kind):
    size = 128
    code, out, err = run_cli(capsys, "phantom", kind, "--out", tmp_path, "--seed", "3", "--count", "1", "--size", str(size))
    assert code == 0, err
    names = [p.name for p in tmp_path.iterdir()]
    assert "README.txt" in names
    assert any(n.endswith((".tif", ".tiff")) for n in names)
    images = [p for p in tmp_path.iterdir() if p.suffix in (".tif", ".tiff")]
    code, out, err = run_cli(capsys, "info", *images, "--json")
    assert code == 0, err


def test_console_script_user_error_has_no_traceback(tmp_path):
    """The installed entry point, in a real process: exit 2 and one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "app", "info", str(tmp_path / "missing.tif")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing.tif" in proc.stderr


def test_core_imports_no_qt():
    """Every import-linter contract in pyproject.toml: no Qt in core or pipelines, the layers, independent pipelines."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_phantom_testis_writes_named_channels_and_truth(capsys, tmp_path):
    """DAPI is channel 0 and the antibodies follow, named in the OME metadata; the truth JSON lists tubules and cells."""
    code, _, err = run_cli(capsys, "phantom", "testis", "--out", tmp_path, "--size", "512", "--markers", "SOX9,CREM")
    assert code == 0, err
    code, out, err = run_cli(capsys, "info", tmp_path / "testis_000.ome.tif", "--json")
    assert code == 0, err
    info = json.loads(out)
    info = info[0] if isinstance(info, list) else info
    assert info["channel_names"] == ["DAPI", "SOX9", "CREM"]
    truth = json.loads((tmp_path / "testis_000_truth.json").read_text())
    assert truth["synthetic"] is True and truth["tubules"] and truth["cells"]
    code, _, err = run_cli(capsys, "phantom", "testis", "--out", tmp_path / "x", "--size", "512", "--markers", "GFAP")
    assert code == 2 and "GFAP" in err


def test_nuclei_phantom_is_seeded_and_labels_match_image():
    from app.core.phantoms import nuclei

    a, b, c = nuclei(seed=1, size=96, count=8), nuclei(seed=1, size=96, count=8), nuclei(seed=2, size=96, count=8)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    assert len(np.unique(a.labels)) - 1 == len(a.objects) >= 5
    assert a.image[a.labels > 0].mean() > 2 * a.image[a.labels == 0].mean()


def test_brightfield_phantom_nucleus_contrast_lowest_in_focus():
    from app.core.phantoms import brightfield_stack

    p = brightfield_stack(seed=0, size=128, count=10, n_planes=9)
    inside = p.labels > 0
    contrast = [abs(plane[inside].mean() - plane[~inside].mean()) for plane in p.planes]
    assert contrast[4] < contrast[0] and contrast[4] < contrast[8]


def test_output_into_a_closed_pipe_is_quiet(tmp_path):
    """`stagescope info ... | head -1`: the reader leaves early; no BrokenPipe traceback, exit 0."""
    from app.core.phantoms import write_phantom

    images = [p for p in write_phantom("nuclei", tmp_path, count=3, size=64) if p.suffix == ".tif"]
    script = (f"{sys.executable} -m app info {' '.join(str(p) for p in images * 200)} | head -n 1")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("kind,size", [("nuclei", 64), ("testis", 512)])
def test_phantom_never_overwrites_files(capsys, tmp_path, kind, size):
    """A second phantom into the same folder is refused, and the first one's files are left as they were."""
    code, _, err = run_cli(capsys, "phantom", kind, "--out", tmp_path, "--count", "1", "--size", str(size), "--seed", "1")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = run_cli(capsys, "phantom", kind, "--out", tmp_path, "--count", "1", "--size", str(size), "--seed", "2")
    assert code == 2 and "never overwrite" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
