"""slimtorch: make trained PyTorch models smaller and faster, with measured size, speed and accuracy."""

__version__ = "0.1.0"

from slimtorch import zoo  # noqa: E402
from slimtorch.api import decompose, prune, quantize  # noqa: E402  (verbs last: they shadow subpackage names)
from slimtorch.errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    SlimError,
    UnsupportedModelError,
)
from slimtorch.io.load import load  # noqa: E402
from slimtorch.io.save import save  # noqa: E402
from slimtorch.measure import Comparison, Metrics, compare, measure  # noqa: E402
from slimtorch.train.finetune import Finetune, finetune  # noqa: E402

__all__ = [
    "ArtifactError",
    "Comparison",
    "ConfigError",
    "DataError",
    "Finetune",
    "Metrics",
    "SlimError",
    "UnsupportedModelError",
    "__version__",
    "compare",
    "decompose",
    "finetune",
    "load",
    "measure",
    "prune",
    "quantize",
    "save",
    "zoo",
]
