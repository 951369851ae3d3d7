"""Kaizen output files."""

from __future__ import annotations

import numpy as np


def test_object_stack_file_has_the_same_bytes_whenever_it_is_written(tmp_path, monkeypatch):
    """np.savez stamps zip entries with the clock: two runs of one image differed in kaizen.objects.npz."""
    import time

    from app.pipelines.kaizen.outputs import write_npz

    arrays = {"codes": np.arange(12).reshape(3, 4), "masks": np.ones((2, 5, 5), bool)}
    write_npz(tmp_path / "a.npz", arrays)
    monkeypatch.setattr(time, "localtime", lambda *_: time.struct_time((2031, 5, 6, 7, 8, 9, 0, 126, 0)))
    write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "b.npz") as loaded:
        assert loaded["masks"].dtype == bool and (loaded["codes"] == arrays["codes"]).all()
