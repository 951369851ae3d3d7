"""Tests for app.core.modelcard: save/load round trip, sha256 check, fp16, fit checks, discovery."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from app.core.errors import ModelError
from app.core.modelcard import (
    ModelCard,
    find_models,
    load_model,
    load_model_card,
    load_state_dict,
    resolve_model,
    save_model,
)


@pytest.fixture(autouse=True, scope="module")
def all_pipelines_registered() -> None:
    """Cards name pipelines; with only some registered (another test module imported Kaizen alone) the others
    were refused, so this module failed after test_kaizen_outputs.  Register them all, as the app does."""
    from app.pipelines import registry

    registry.pipelines()


@pytest.fixture(autouse=True)
def private_user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never look at the real user's models."""
    monkeypatch.setenv("STAGESCOPE_DATA_DIR", str(tmp_path / "userdata"))
    return tmp_path / "userdata"


def make_card(name: str = "bf-unet", pipeline: str = "brightfield", **kw) -> ModelCard:
    values = dict(architecture="unet", backbone=None, classes=["background", "nucleus"], input_channels=3,
                  channel_meaning=[-2.0, 0.0, 2.0], pixel_size_um=0.65,
                  normalisation={"method": "percentile", "low": 1, "high": 99.8},
                  training={"data": "brightfield-sephace set1", "recipe": {"epochs": 2}, "time": "10 s",
                            "device": "cpu", "synthetic": False},
                  metrics={"val": {"data": "brightfield-sephace set2", "AP50": 0.71}},
                  extra={"depth": 3})
    values.update(kw)
    return ModelCard(name=name, pipeline=pipeline, **values)


def linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(64, 32)


def test_round_trip(tmp_path: Path) -> None:
    net = linear()
    card = save_model(tmp_path / "m", make_card(), net.state_dict())
    assert card.weights_sha256 == hashlib.sha256((tmp_path / "m" / "weights.pt").read_bytes()).hexdigest()
    assert card.weights_dtype == "float32" and card.folder == tmp_path / "m"
    stored = json.loads((tmp_path / "m" / "card.json").read_text())
    assert stored["weights_sha256"] == card.weights_sha256 and "folder" not in stored
    assert stored["schema_version"] == 1 and stored["pipeline"] == "brightfield"

    loaded = load_model_card(tmp_path / "m")
    assert loaded == card
    state = load_state_dict(tmp_path / "m")
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], net.weight.detach()) and torch.equal(state["bias"], net.bias.detach())
    other = torch.nn.Linear(64, 32)
    other.load_state_dict(state)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "weights.pt"]  # no temp left


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    save_model(tmp_path / "m", make_card(), linear().state_dict())
    weights = tmp_path / "m" / "weights.pt"
    torch.save(linear(seed=1).state_dict(), weights)  # a valid file, but not the one the card names
    with pytest.raises(ModelError, match="weights do not match the card: file changed or corrupt"):
        load_state_dict(tmp_path / "m")
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ModelError, match="do not match the card"):
        load_state_dict(tmp_path / "m")


def test_half_precision_halves_the_file_and_loads_as_float32(tmp_path: Path) -> None:
    net = torch.nn.Linear(256, 128)
    full = save_model(tmp_path / "full", make_card(), net.state_dict())
    half = save_model(tmp_path / "half", make_card(), net, half=True)  # a module is accepted too
    size_full = (tmp_path / "full" / "weights.pt").stat().st_size
    size_half = (tmp_path / "half" / "weights.pt").stat().st_size
    assert size_full > 128 * 257 * 4 and size_half < 0.6 * size_full
    assert (full.weights_dtype, half.weights_dtype) == ("float32", "float16")
    state = load_state_dict(tmp_path / "half")
    assert state["weight"].dtype == torch.float32
    assert torch.allclose(state["weight"], net.weight.detach(), atol=1e-3, rtol=1e-3)
    assert not torch.equal(state["weight"], net.weight.detach())  # it really went through fp16
    raw = torch.load(tmp_path / "half" / "weights.pt", weights_only=True)
    assert raw["weight"].dtype == torch.float16


def test_non_float_buffers_keep_their_dtype(tmp_path: Path) -> None:
    bn = torch.nn.BatchNorm2d(4)
    save_model(tmp_path / "bn", make_card(), bn.state_dict(), half=True)
    state = load_state_dict(tmp_path / "bn")
    assert state["num_batches_tracked"].dtype == torch.int64
    assert state["running_var"].dtype == torch.float32


def test_check_fits_says_why() -> None:
    card = make_card()
    card.check_fits(pipeline="brightfield", n_channels=3, classes=["background", "nucleus"])
    kaizen = make_card("kz", pipeline="kaizen", channel_meaning=[], input_channels=1)
    with pytest.raises(ModelError, match=r"^model 'kz' is a kaizen model, not a brightfield model$"):
        kaizen.check_fits(pipeline="brightfield")
    with pytest.raises(ModelError, match=r"^model 'bf-unet' expects 3 input planes \(-2.0, 0.0, 2.0\), "
                                         r"the image has 2$"):
        card.check_fits(n_channels=2)
    cells = make_card("c", pipeline="stagetool-cells", input_channels=1, channel_meaning=["DAPI"],
                      classes=["Sertoli", "Spg"])
    with pytest.raises(ModelError, match=r"expects 1 input channels \(DAPI\), the image has 4"):
        cells.check_fits(n_channels=4)
    with pytest.raises(ModelError, match=r"lacks \['Spc Pach'\]"):
        cells.check_fits(classes=["Sertoli", "Spg", "Spc Pach"])
    with pytest.raises(ModelError, match="different order"):
        cells.check_fits(classes=["Spg", "Sertoli"])


def test_loading_a_model_that_does_not_fit_never_reads_weights(tmp_path: Path) -> None:
    save_model(tmp_path / "m", make_card(), linear().state_dict())
    (tmp_path / "m" / "weights.pt").write_bytes(b"not even a zip")
    with pytest.raises(ModelError, match="not a kaizen model"):
        load_model(tmp_path / "m", pipeline="kaizen")
    with pytest.raises(ModelError, match="do not match"):
        load_model(tmp_path / "m", pipeline="brightfield", n_channels=3)


def test_missing_and_corrupt_cards_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model folder not found: .*nowhere"):
        load_model_card(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty is not a model folder: it has no card.json"):
        load_model_card(tmp_path / "empty")
    save_model(tmp_path / "m", make_card(), linear().state_dict())
    (tmp_path / "m" / "card.json").write_text('{"name": "x", ')
    with pytest.raises(ModelError, match=r"m/card.json is corrupt"):
        load_model_card(tmp_path / "m")
    (tmp_path / "m" / "card.json").write_text('{"name": "x", "pipeline": "brightfield"}')
    with pytest.raises(ModelError, match="incomplete: no 'architecture', 'input_channels'"):
        load_model_card(tmp_path / "m")
    from app.pipelines.registry import pipelines

    pipelines()  # the registry tells core which model pipelines exist (core names none)
    (tmp_path / "m" / "card.json").write_text(json.dumps({**make_card().to_dict(), "pipeline": "cellpose"}))
    with pytest.raises(ModelError, match="unknown pipeline 'cellpose'"):
        load_model_card(tmp_path / "m")
    (tmp_path / "m" / "card.json").write_text(json.dumps({**make_card().to_dict(), "schema_version": 9}))
    with pytest.raises(ModelError, match="newer than this app"):
        load_model_card(tmp_path / "m")
    (tmp_path / "m" / "weights.pt").unlink()
    (tmp_path / "m" / "card.json").write_text(json.dumps(make_card().to_dict()))
    with pytest.raises(ModelError, match="has no weights.pt"):
        load_state_dict(tmp_path / "m")


def test_invalid_card_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="channel_meaning has 2 entries for 3 input channels"):
        save_model(tmp_path / "m", make_card(channel_meaning=[0, 1]), linear().state_dict())
    assert not (tmp_path / "m").exists()


def test_find_and_resolve(tmp_path: Path, private_user_dir: Path) -> None:
    bundled = tmp_path / "bundled"
    user_models = private_user_dir / "models"
    save_model(bundled / "bf-unet", make_card("bf-unet"), linear().state_dict())
    save_model(bundled / "stagetool" / "tubules", make_card("tubules", "stagetool-tubules", input_channels=1,
                                                            channel_meaning=["DAPI"]), linear().state_dict())
    save_model(user_models / "my-unet", make_card("bf-unet", training={"data": "mine"}), linear(2).state_dict())
    (bundled / "broken").mkdir()
    (bundled / "broken" / "card.json").write_text("{")
    (bundled / "not-a-model").mkdir()
    dirs = [user_models, bundled]

    names = [(c.name, c.folder.name) for c in find_models(dirs=dirs)]
    assert names == [("bf-unet", "my-unet"), ("bf-unet", "bf-unet"), ("tubules", "tubules")]
    assert [c.name for c in find_models("stagetool-tubules", dirs=dirs)] == ["tubules"]
    assert find_models("kaizen", dirs=dirs) == []

    assert resolve_model("bf-unet", "brightfield", dirs=dirs).folder == user_models / "my-unet"  # user first
    assert resolve_model(bundled / "bf-unet", "brightfield").folder == bundled / "bf-unet"
    assert resolve_model(str(bundled / "stagetool" / "tubules")).name == "tubules"
    with pytest.raises(ModelError, match="is a stagetool-tubules model, not a brightfield model"):
        resolve_model("tubules", "brightfield", dirs=dirs)
    with pytest.raises(ModelError, match=r"no brightfield model named 'nope' \(available: bf-unet;"):
        resolve_model("nope", "brightfield", dirs=dirs)
    save_model(user_models / "copy", make_card("bf-unet"), linear().state_dict())
    with pytest.raises(ModelError, match="several models are named 'bf-unet'"):
        resolve_model("bf-unet", dirs=dirs)


def test_default_search_uses_user_dir_from_environment(private_user_dir: Path) -> None:
    save_model(private_user_dir / "models" / "kz", make_card("kz", "kaizen", input_channels=1, channel_meaning=[]),
               linear().state_dict())
    names = [c.name for c in find_models("kaizen")]
    assert names[0] == "kz"  # user models come first; bundled ones (the shipped kaizen model) follow
    assert resolve_model("kz", "kaizen").folder == private_user_dir / "models" / "kz"


def test_model_id_for_run_records(tmp_path: Path) -> None:
    card = save_model(tmp_path / "m", make_card(), linear().state_dict())
    assert card.model_id() == {"name": "bf-unet", "pipeline": "brightfield",
                               "weights_sha256": card.weights_sha256, "folder": str(tmp_path / "m")}


def test_other_pipelines_cards_are_not_read_when_looking_for_one(tmp_path: Path, caplog) -> None:
    """A script that imported Kaizen alone looked up its model and warned "skipping model" for every card of a
    pipeline it had not registered; cards of another pipeline or name are now passed over unread."""
    import json as json_module
    import logging

    save_model(tmp_path / "bf-unet", make_card("bf-unet"), linear().state_dict())
    card = json_module.loads((tmp_path / "bf-unet" / "card.json").read_text())
    card["pipeline"] = "not-registered-here"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "card.json").write_text(json_module.dumps(card | {"name": "other"}))
    with caplog.at_level(logging.WARNING, logger="app.core.modelcard"):
        assert [c.name for c in find_models("brightfield", dirs=[tmp_path])] == ["bf-unet"]
        assert resolve_model("bf-unet", "brightfield", dirs=[tmp_path]).name == "bf-unet"
    assert "skipping model" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="app.core.modelcard"):
        find_models(dirs=[tmp_path])  # listing everything still says which card could not be read
    assert "unknown pipeline 'not-registered-here'" in caplog.text
