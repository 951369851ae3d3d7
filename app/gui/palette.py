"""Light, dark or the system's look for the running application, from :mod:`app.gui.theme`'s colours.

Its own module so that the Settings dialog's actions and the start-up in :mod:`app.gui.main` both use
it without the window's modules importing the start-up module (an import loop).
"""

from __future__ import annotations

from typing import Any


def apply_theme(app: Any, theme: str) -> None:
    """Light, dark or the system's look (Fusion style for light and dark, so they look the same everywhere)."""
    from PySide6.QtGui import QColor, QPalette

    from app.gui.theme import DARK_DISABLED_TEXT, DARK_PALETTE

    if theme == "system":
        return
    app.setStyle("Fusion")
    if theme == "light":
        app.setPalette(app.style().standardPalette())
        return
    palette = QPalette()
    role = QPalette.ColorRole
    for name, colour in DARK_PALETTE.items():
        palette.setColor(getattr(role, name), QColor(colour))
    palette.setColor(QPalette.ColorGroup.Disabled, role.Text, QColor(DARK_DISABLED_TEXT))
    palette.setColor(QPalette.ColorGroup.Disabled, role.ButtonText, QColor(DARK_DISABLED_TEXT))
    app.setPalette(palette)
