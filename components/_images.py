"""The components' default images (``localhost/waferflow-{cpu,gpu}:<version>``, what images/build.sh tags).

Only a default: the pipelines set every task's image from the profile's cluster options
(``cluster.image_registry``, which ``waferflow compile --registry REG`` sets), so nothing here reads the
environment at import time.
"""

from waferflow import __version__

CPU_IMAGE = f"localhost/waferflow-cpu:{__version__}"
GPU_IMAGE = f"localhost/waferflow-gpu:{__version__}"
