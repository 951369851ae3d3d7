"""One device rule, one params base (issue 13 item 5): what "auto" picks, what a pipeline refuses, the
Settings device reaching a job, and old parameter names (model cards, run.json) still read."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.core.device import describe_device, job_params, pick_device, use_threads
from app.core.errors import UserError
from app.core.params import Params, from_dict, param
from app.pipelines.kaizen.train import resolve_device
from app.pipelines.stagetool.models import pick_device as stagetool_device  # imports torchvision before patching


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_is_the_cpu_without_a_gpu_and_mps_only_where_the_pipeline_can_use_it(no_gpu, monkeypatch):
    assert pick_device("auto").type == "cpu" and describe_device("auto") == "CPU"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps"
    assert pick_device("auto", ("cpu", "cuda")).type == "cpu"  # Kaizen on a Mac: the CPU, not an error


def test_a_device_the_pipeline_or_machine_lacks_is_one_line(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(UserError, match="Kaizen cannot run on mps") as caught:
        resolve_device("mps")  # the GUI offers mps: Kaizen refuses it in words
    assert "\n" not in str(caught.value)
    assert stagetool_device("mps").type == "mps"
    for name, words in (("cuda", "no usable CUDA GPU"), ("cuda:1", "no usable CUDA GPU"), ("tpu9", "unknown device")):
        with pytest.raises(UserError, match=words):
            pick_device(name)


def test_use_threads_sets_torch_and_zero_keeps_its_choice():
    before = torch.get_num_threads()
    try:
        use_threads(1)
        assert torch.get_num_threads() == 1
        use_threads(0)
        use_threads(None)
        assert torch.get_num_threads() == 1
        with pytest.raises(UserError):
            use_threads(-1)
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class DeviceParams:
    device: str = "auto"
    threads: int = 0


def test_job_params_take_the_settings_device_only_where_the_params_say_auto():
    assert job_params(DeviceParams(), "cpu", 2) == DeviceParams(device="cpu", threads=2)
    assert job_params(DeviceParams(device="cuda", threads=3), "cpu", 2) == DeviceParams(device="cuda", threads=3)
    assert job_params(DeviceParams(), "auto", None) == DeviceParams()


# ----------------------------------------------------------------------------- params base


@dataclasses.dataclass
class Toy(Params):
    mode: str = param("a", "which mode", choices=("a", "b"))
    sizes: tuple[int, ...] = param((1, 2), "sizes")
    epochs: int = param(3, "passes")
    lr: float = param(0.1, "learning rate")
    threads: int = param(0, "CPU threads")


def test_params_round_trip_read_old_names_and_check_choices():
    toy = Toy(mode="b", sizes=(4,))
    assert toy.to_dict()["sizes"] == [4] and Toy.from_dict(toy.to_dict()) == toy
    old = Toy.from_dict({"max_epochs": 7, "learning_rate": 0.5, "num_threads": 2, "unknown": 1})
    assert (old.epochs, old.lr, old.threads) == (7, 0.5, 2)
    assert Toy.from_dict({"epochs": 5, "max_epochs": 7}).epochs == 5  # today's name wins
    assert dataclasses.fields(Toy)[0].metadata["help"] == "which mode"
    with pytest.raises(UserError, match="mode must be one of a, b"):
        Toy(mode="c").validate()


def test_the_three_pipelines_share_one_name_for_epochs_learning_rate_and_threads():
    from app.pipelines.brightfield import params as bf
    from app.pipelines.kaizen import params as kz
    from app.pipelines.stagetool import params as st

    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (bf.TrainParams, kz.TrainParams, st.TrainParams)}
    for cls, fields in names.items():
        assert "epochs" in fields and "lr" in fields, cls
        assert not fields & {"max_epochs", "learning_rate", "num_threads"}, cls
        assert issubclass(cls, Params)
    # a brightfield model card written before the rename still loads its epochs
    assert from_dict(bf.TrainParams, {"max_epochs": 9, "planes": [1, 2]}) == bf.TrainParams(epochs=9, planes=(1, 2))
    assert all(f.metadata.get("help") for f in dataclasses.fields(kz.DecomposeParams))


def test_old_cli_option_names_still_parse():
    from app.cli import build_parser

    args = build_parser().parse_args(["brightfield", "train", "f1", "--out", "m", "--max-epochs", "2",
                                      "--learning-rate", "0.01"])
    assert getattr(args, "train__epochs") == 2 and getattr(args, "train__lr") == 0.01
