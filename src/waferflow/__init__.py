"""waferflow: a transfer-learning factory for wafer-map defect classifiers.

The library has no ``kfp`` import and no side effects at import time.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
