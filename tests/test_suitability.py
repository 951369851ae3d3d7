"""The Qt-free rules that pick the pipeline for an image and refuse runs that cannot apply (issue 14)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.pipelines.suitability import ImageFacts, image_facts, image_kind, refusals, suggest_pipeline

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Spec:
    title: str
    image_kinds: tuple[str, ...]


SPECS = {"brightfield": Spec("Brightfield", ("brightfield-stack",)), "kaizen": Spec("Kaizen", ("fluorescence",)),
         "stagetool": Spec("Stagetool", ("section", "fluorescence"))}
SECTION = ImageFacts("testis_000", 2048, 2048, 2, 1, ("DAPI", "SOX9"), 0.5)
NUCLEI = ImageFacts("nuclei_000", 256, 256)
STACK = ImageFacts("field_000", 512, 512, 1, 9)


def test_each_kind_of_image_gets_its_pipeline():
    assert [image_kind(f) for f in (SECTION, NUCLEI, STACK)] == ["section", "fluorescence", "brightfield-stack"]
    assert image_kind(ImageFacts("big", 4000, 5000)) == "section"  # large, unnamed channel
    assert image_kind(ImageFacts("small", 600, 800, 2, 1, ("DAPI", "marker1"), 0.5)) == "section"
    assert suggest_pipeline([STACK], SPECS) == "brightfield"
    assert suggest_pipeline([SECTION], SPECS) == "stagetool"
    assert suggest_pipeline([NUCLEI, NUCLEI, SECTION], SPECS) == "kaizen"  # the most common kind
    assert suggest_pipeline([STACK], {"kaizen": SPECS["kaizen"]}) is None


def test_stagetool_refuses_what_is_not_a_section():
    assert refusals("stagetool", [SECTION]) == []
    [line] = refusals("stagetool", [NUCLEI])
    assert line.startswith("nuclei_000: no pixel size")
    small = ImageFacts("tiny", 256, 256, 1, 1, ("DAPI",), 0.3)
    assert "smaller than one seminiferous tubule" in refusals("stagetool", [small])[0]
    assert "z-stack" in refusals("stagetool", [STACK])[0]
    blank = ImageFacts("blank", 2048, 2048, 2, 1, ("DAPI", "SOX9"), 0.5, overview=np.zeros((2, 64, 64), np.uint16))
    assert "no tissue" in refusals("stagetool", [blank])[0]
    assert all("\n" not in line for line in refusals("stagetool", [NUCLEI, small, STACK, blank]))


def test_stagetool_checks_the_channels_a_run_names():
    from app.pipelines.stagetool.params import AnalyzeParams

    assert refusals("stagetool", [SECTION], AnalyzeParams(dapi="DAPI", antibodies="SOX9=SOX9")) == []
    [line] = refusals("stagetool", [SECTION], AnalyzeParams(antibodies="CREM=CREM"))
    assert line == "testis_000: antibody CREM: no channel 'CREM' (channels: DAPI, SOX9)"
    assert "no channel 3" in refusals("stagetool", [SECTION], AnalyzeParams(dapi="3"))[0]


def test_brightfield_wants_the_planes_its_model_was_trained_on():
    model = str(REPO / "models" / "brightfield-phantom-demo")  # 9-plane stacks
    assert refusals("brightfield", [STACK], None, {"brightfield": model}) == []
    [line] = refusals("brightfield", [NUCLEI], None, {"brightfield": model})
    assert line.startswith("nuclei_000: 1 plane(s), but model brightfield-phantom-demo was trained on 9")
    assert "z-stack" in refusals("brightfield", [NUCLEI])[0]  # no model given: one plane is not a stack


def test_facts_are_read_from_the_file(tmp_path):
    import tifffile

    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 500, 600), np.uint16), ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "SOX9"]}, "PhysicalSizeX": 0.5,
                               "PhysicalSizeY": 0.5})
    facts = image_facts("s", path)
    assert (facts.height, facts.width, facts.n_channels, facts.channels) == (500, 600, 2, ("DAPI", "SOX9"))
    assert facts.pixel_size_um == 0.5 and facts.overview is not None
    assert "no tissue" in refusals("stagetool", [facts])[0]  # an empty picture
