"""The look of the GUI in one place: window palette, channel and overlay display colours, text colours, sizes.

Only presentation lives here.  The science palette (stage and cell-type colours, the excluded and
selection colours) stays with its vocabulary in the core, so reports and the viewer agree.
"""

from __future__ import annotations

# ---------------------------------------------------------------------- window palette (dark theme)
DARK_PALETTE = {  # QPalette.ColorRole name -> colour
    "Window": "#2b2b2b", "WindowText": "#e6e6e6", "Base": "#1e1e1e", "AlternateBase": "#2b2b2b",
    "ToolTipBase": "#3a3a3a", "ToolTipText": "#e6e6e6", "Text": "#e6e6e6", "Button": "#353535",
    "ButtonText": "#e6e6e6", "BrightText": "#ff5555", "Highlight": "#2f65ca", "HighlightedText": "#ffffff",
    "Link": "#6ea8ff", "PlaceholderText": "#8a8a8a",
}
DARK_DISABLED_TEXT = "#7a7a7a"  # text and button text of disabled widgets

# ---------------------------------------------------------------------- plots and the image viewer
PLOT_BACKGROUND = "k"  # pyqtgraph's colour letters: black plots, white axes and scale bar
PLOT_FOREGROUND = "w"
SCALE_BAR_COLOUR = "w"
TITLE_STYLE = "font-weight: bold"  # the viewer's image name
Z_SLIDER_WIDTH = 160

# ---------------------------------------------------------------------- channel colours (display defaults)
CHANNEL_SINGLE_COLOUR = "#ffffff"  # a one-channel image is drawn in grey levels
CHANNEL_NAMED_COLOURS = {"dapi": "#5a8cff", "hoechst": "#5a8cff"}
CHANNEL_PALETTE = ("#5a8cff", "#3cff5a", "#ff3cff", "#ff5a3c", "#ffe43c", "#3ce4ff", "#ffa03c")

# ---------------------------------------------------------------------- overlays (not the science palette)
# Classes of other pipelines (Kaizen objects, brightfield nuclei) cycle through this palette, in an order
# whose first entries also stand apart from Kaizen's generated-object picture (GENERATED_COLOUR) drawn
# under them; tests/test_gui_look.py checks it.
GENERIC_COLOURS = ("#00e1e1", "#ffc300", "#00b45a", "#ff5a00", "#ffff96", "#c3ffd2", "#ffb496", "#698700")
GENERATED_COLOUR = "#ff4fd8"
LAYER_WIDTH = {"tubules": 2.0}  # outline width (screen pixels) per layer
DEFAULT_LAYER_WIDTH = 1.5
SELECTION_WIDTH = 3.0
OPACITY_WIDTH = 70  # legend column holding each layer's opacity slider
LEGEND_MIN_WIDTH = 160
ICON_SIZE = 14  # legend and channel-list colour swatches

# ---------------------------------------------------------------------- messages and progress
ERROR_TEXT = "#d32f2f"  # an inline error under a form field
WARNING_STYLE = "color: #ff8a65; font-weight: bold"  # a training result that found nothing
FAILURE_COLOUR = "#d62728"  # a failed job's bar and row: not the colour of success
PROGRESS_BAR_HEIGHT = 18
THRESHOLD_COLOUR = "#ffcc00"  # the report exporter's positive threshold and positive cells


def error_style() -> str:
    """Style sheet of an inline error label."""
    return f"color: {ERROR_TEXT}"
