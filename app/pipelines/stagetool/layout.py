"""The names in a Stagetool results folder: one home that every Stagetool module imports at its top.

Per section folder: predictions.json (the models' raw output), objects.json (with the user's edits
applied), summary.json and the section workbook; per run folder: batch.xlsx, log.txt and, with
ground truth, evaluation.json (per section, and pooled under :data:`POOLED`).  A leaf module (no
in-house imports), so reading a name never imports prediction or reporting code.
"""

from __future__ import annotations

PIPELINE = "stagetool"
PREDICTIONS_FILE = "predictions.json"
OBJECTS_FILE = "objects.json"
SUMMARY_FILE = "summary.json"
LOG_FILE = "log.txt"
BATCH_WORKBOOK = "batch.xlsx"
EVALUATION_FILE = "evaluation.json"
POOLED = "all sections (pooled)"  # the evaluation of all sections together, beside the per-section ones
