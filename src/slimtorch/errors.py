"""The slimtorch error family: every failure a user can cause is one of these, with the way out."""


class SlimError(Exception):
    """Base class of every error slimtorch raises on purpose."""


class ConfigError(SlimError, ValueError):
    """A config, recipe or option has a bad value: the message names the field, the value and what is allowed."""


class UnsupportedModelError(SlimError):
    """The model (or one of its layers) cannot be handled by the requested method."""


class DataError(SlimError):
    """Calibration, training or evaluation data is missing or has the wrong form."""


class ArtifactError(SlimError):
    """A saved file is missing, truncated, tampered with or not a slimtorch artifact."""
