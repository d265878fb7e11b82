"""Shared test settings: CPU only, quiet plotting, deterministic torch threads."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WAFERFLOW_PROGRESS", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)
