"""Exceptions that carry a message saying what is wrong and how to fix it."""


class WaferflowError(Exception):
    """Base class. The CLI prints ``str(err)`` and exits non-zero."""


class DataError(WaferflowError, ValueError):
    """Input data violates the data contract."""


class ConfigError(WaferflowError, ValueError):
    """A config file or override is invalid."""


class WeightsError(WaferflowError, RuntimeError):
    """Requested pretrained weights cannot be had."""


class ModelFormatError(WaferflowError, ValueError):
    """A model file (checkpoint, ONNX, engine) is missing, corrupt or inconsistent."""


class RegistryError(WaferflowError, RuntimeError):
    """MLflow tracking/registry or its artifact store failed."""
