"""Component images, tagged to the package version under a configurable registry prefix.

``WAFERFLOW_IMAGE_REGISTRY`` (default ``localhost``) is read when the components are imported, so
``waferflow compile --registry REG`` sets it before importing them.
"""

import os

from waferflow import __version__

REGISTRY = os.environ.get("WAFERFLOW_IMAGE_REGISTRY", "localhost").rstrip("/")
CPU_IMAGE = f"{REGISTRY}/waferflow-cpu:{__version__}"
GPU_IMAGE = f"{REGISTRY}/waferflow-gpu:{__version__}"
