"""The desktop application (PySide6 + pyqtgraph): arranges widgets and starts jobs; all work is in core/pipelines."""
