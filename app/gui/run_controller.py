"""Run submission and pyramid jobs: the Run panel's request becomes a queued job (local threads or Dask).

Before a run is queued every image is checked against the pipeline's rules (unreadable or unsuitable
images refuse the run, with the reasons).  A run on the settings' batch cluster goes through the
batch adapter; otherwise the pipeline's own ``analyze`` runs on a worker thread.  Overview levels of
big images are built once per image in the queue's image lane.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QTimer

from app.core.device import job_params
from app.core.errors import UserError
from app.core.pyramid import build_pyramid, pyramid_cache_dir
from app.gui.run_panel import (
    RunRequest, batch_adapter, cluster_batch_job, run_outcome, with_threads,
)

if TYPE_CHECKING:
    from app.gui.window_api import WindowApi


class RunController:
    """Queues pipeline runs and pyramid jobs; tells the Run panel which images are selected."""

    def __init__(self, window: WindowApi) -> None:
        self.w = window
        self.pyramid_jobs: set[str] = set()
        self.facts: dict[Any, Any] = {}  # (image, project metadata) -> suitability.ImageFacts or the read error
        self.selection_timer = QTimer(window)  # many selection signals (a refresh, a Shift+click) -> one update
        self.selection_timer.setSingleShot(True)
        self.selection_timer.timeout.connect(self.selection_changed)

    def show_run_panel(self) -> None:
        """Show and raise the Run dock."""
        self.w.docks["run"].show()
        self.w.docks["run"].raise_()

    def run_pipeline(self, all_images: bool = False) -> None:
        """Queue the Run panel's pipeline on the selected images (or all)."""
        if self.selection_timer.isActive():  # the panel shows the channels of the images selected just now
            self.selection_timer.stop()
            self.selection_changed()
        self.w.guard("Cannot start the run", self.w.run_panel.request_run, all_images)

    def submit_run(self, request: RunRequest) -> Any:
        """Queue a run request (the Run panel's signal); None when it is refused."""
        w = self.w
        if not w.projects.need_project():
            return None
        from app.pipelines import registry

        spec = registry.get(request.pipeline)
        if request.images:
            images = list(request.images)
        elif request.all_images:
            images = [e.name for e in w.project.images()]
        else:
            images = w.browser.selected_images() or ([w.current_image] if w.current_image else [])
        if not images:
            w.show_error("No images", "Select images in the project browser, or run on all images.")
            return None
        reasons = self.refusals(request.pipeline, images, request.params, request.models)
        if reasons:
            more = f" (and {len(reasons) - 1} more image(s))" if len(reasons) > 1 else ""
            w.show_error("Cannot start the run", f"{spec.title}: {reasons[0]}{more}", "\n".join(reasons))
            return None
        threads = int(w.settings.threads)
        project, models = w.project, dict(request.models)
        params = job_params(request.params, w.settings.device, threads)  # Settings: the jobs' defaults
        title = f"{spec.title} on {images[0]}" if len(images) == 1 else f"{spec.title} on {len(images)} images"
        w.save_settings()
        adapter = batch_adapter(request.pipeline, w.settings, project, images)
        if adapter is not None:  # the settings' run queue: a Dask scheduler or a local cluster
            cluster = w.settings.batch_cluster
            return w.queue.submit(f"{title} ({cluster})", lambda: cluster_batch_job(
                project, request.pipeline, adapter, images, params, models, cluster), kind="analyze",
                on_success=self.run_finished, outcome=run_outcome)
        return w.queue.submit(title, lambda: with_threads(threads, lambda: spec.analyze(project, images, params,
                                                                                         models)),
                              kind="analyze", on_success=self.run_finished, outcome=run_outcome)

    def image_facts(self, name: str) -> Any:
        """What the pipeline rules know of a project image (read once; a read error is kept as its text)."""
        from app.core.project_edit import entry_metadata
        from app.pipelines.suitability import image_facts

        project = self.w.project
        try:
            metadata = entry_metadata(project, name)
        except UserError as error:
            return f"cannot be read: {error}"
        key = (name, repr(sorted(metadata.items())))  # read again once the user sets a pixel size or channels
        if key not in self.facts:
            try:
                self.facts[key] = image_facts(name, project.image_path(name),
                                              pyramid_cache_dir(project.folder, name), metadata)
            except (UserError, OSError, ValueError) as error:
                self.facts[key] = f"cannot be read: {error}"
        return self.facts[key]

    def refusals(self, pipeline: str, images: list[str], params: Any, models: dict[str, str]) -> list[str]:
        """One line per image the pipeline cannot analyse (unreadable, wrong kind): the run is refused."""
        from app.pipelines.suitability import refusals

        facts = [self.image_facts(name) for name in images]
        unreadable = [f"{name}: {item}" for name, item in zip(images, facts) if isinstance(item, str)]
        return unreadable + refusals(pipeline, [f for f in facts if not isinstance(f, str)], params, models)

    def selection_changed(self) -> None:
        """Tell the run panel which images are selected (their channels, the pipeline that fits them)."""
        w = self.w
        if w.project is None:
            return
        names = w.browser.selected_images() or ([w.current_image] if w.current_image else [])
        facts = [self.image_facts(name) for name in names[:50]]
        w.run_panel.set_images([f for f in facts if not isinstance(f, str)])

    def run_finished(self, result: Any) -> None:
        """A pipeline job ended: list the new run and show its results on the current image."""
        self.w.browser.refresh()
        if not isinstance(result, (str, Path)) or not (Path(result) / "run.json").is_file():
            return
        from app.core.project import Run

        self.w.results.show_run(Run.load(result))

    def build_pyramid_for_current(self) -> None:
        """Rebuild the overview levels of the image on screen."""
        if self.w.current_image:
            self.build_pyramid_for(self.w.current_image, force=True)

    def build_pyramid_for(self, name: str, force: bool = False) -> None:
        """Queue building the cached overview levels of a project image (once)."""
        w = self.w
        if w.project is None or (name in self.pyramid_jobs and not force):
            return
        path = w.project.image_path(name)
        cache = pyramid_cache_dir(w.project.folder, name)
        self.pyramid_jobs.add(name)

        def done(_result: Any) -> None:
            self.pyramid_jobs.discard(name)
            w.browser.refresh_thumbnail(name)
            if w.current_image == name:
                w.viewer.reopen()

        # a worker thread: with the heap frozen (gc.freeze) it stalls the GUI 10-15 ms on a quiet machine, while
        # a child process stalled it 135-240 ms (bench/gui.py --stall-only, 2026-11-26)
        record = w.queue.submit(f"Overview levels of {name}", lambda: build_pyramid(path, cache),
                                kind="pyramid", on_success=done, lane="images")
        w.queue.failed.connect(lambda r: self.pyramid_jobs.discard(name) if r is record else None)
