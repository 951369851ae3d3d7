"""The Settings device (shown in the status bar) is every job's default: a run whose params say ``auto``
runs on it, a device typed into the run form wins (issue 13 item 5)."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("pytestqt")

from app.core.settings import Settings  # noqa: E402
from app.pipelines.registry import PipelineSpec, register  # noqa: E402

from gui_fakes import make_project  # noqa: E402
from gui_testing import main_window  # noqa: E402

SEEN: list[str] = []


@dataclasses.dataclass
class DeviceParams:
    device: str = "auto"


def _analyze(project, image_names, params, models):
    from app.core.jobs import Progress

    yield Progress("work", 0, 1, "device")
    SEEN.append(params.device)
    return None


@pytest.mark.parametrize("setting, typed, expected", [("cpu", None, "cpu"), ("auto", None, "auto"),
                                                      ("cpu", "cuda:1", "cuda:1")])
def test_a_run_uses_the_settings_device_unless_the_form_names_one(qtbot, tmp_path, setting, typed, expected):
    register(PipelineSpec(name="devicetest", title="Test device", description="test pipeline", params=DeviceParams,
                          analyze=_analyze, image_kinds=("section",), layers=("tubules",)))
    project = make_project(tmp_path, n_images=1)
    win = main_window(qtbot, size=None, settings=Settings(device=setting))
    try:
        assert win.open_project(project.folder) and win.wait_until_ready(20)
        win.run_panel.select_pipeline("devicetest")
        if typed:
            win.run_panel.form.editors["device"].set_value(typed)
        SEEN.clear()
        win.run_pipeline(True)
        assert win.queue.wait(30)
        assert SEEN == [expected]
    finally:
        win.confirm = lambda *args: True
        win.queue.shutdown()
        win.close()
