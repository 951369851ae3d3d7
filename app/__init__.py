"""Stagescope: microscopy deep-learning pipelines with a desktop GUI and a CLI."""
__version__ = "0.1.0"
