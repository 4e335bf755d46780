# ruff: noqa: I001
"""slimtorch: make trained PyTorch models smaller and faster, with measured size, speed and accuracy."""

from slimtorch._version import __version__  # noqa: E402

# Import order matters: the verbs come last because they shadow subpackage names (slimtorch.prune, ...).
from slimtorch import zoo  # noqa: E402
from slimtorch.errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    SlimError,
    UnsupportedModelError,
)
from slimtorch.io.load import load  # noqa: E402
from slimtorch.io.save import save  # noqa: E402
from slimtorch.onnx.export import export_onnx  # noqa: E402
from slimtorch.onnx.check import AgreementReport, Tolerance, check_agreement  # noqa: E402
from slimtorch.onnx import measure as _onnx_measure  # noqa: E402, F401  (registers measure(runtime="onnxruntime"))
from slimtorch.measure import Comparison, Metrics, compare, measure  # noqa: E402
from slimtorch.train.finetune import Finetune  # noqa: E402
from slimtorch.recipe import Recipe, load_recipe  # noqa: E402
from slimtorch.lowrank import LowRank  # noqa: E402
# each pruning method's module registers its handler; the configs themselves live in slimtorch.prune.config
from slimtorch.prune.structured import StructuredPruning  # noqa: E402
from slimtorch.prune.unstructured import UnstructuredPruning  # noqa: E402
from slimtorch.prune.semistructured import NMPruning  # noqa: E402
from slimtorch.prune.config import GradualPruning, IterativePruning  # noqa: E402
from slimtorch.prune.layers import LayerPruning  # noqa: E402
from slimtorch.prune.masks import make_permanent  # noqa: E402
from slimtorch.quant.binary import Binarize, Ternarize  # noqa: E402
from slimtorch.quant.ptq import DynamicQuant, StaticQuant, WeightOnlyQuant  # noqa: E402
from slimtorch.quant.qat import convert, prepare_qat  # noqa: E402
from slimtorch.quant.config import QuantAwareTraining  # noqa: E402
from slimtorch.train import qat as _qat_stage  # noqa: E402, F401  (registers the QuantAwareTraining handler)
from slimtorch.train import prune_schedules as _schedules  # noqa: E402, F401  (registers the schedules' handlers)
from slimtorch.search.sensitivity import quant_sensitivity  # noqa: E402

from slimtorch.api import compress, decompose, finetune, prune, quantize  # noqa: E402  (keep last)

__all__ = [
    "AgreementReport",
    "Tolerance",
    "check_agreement",
    "export_onnx",
    "ArtifactError",
    "Binarize",
    "Comparison",
    "ConfigError",
    "DataError",
    "DynamicQuant",
    "Finetune",
    "GradualPruning",
    "IterativePruning",
    "NMPruning",
    "UnstructuredPruning",
    "make_permanent",
    "LayerPruning",
    "LowRank",
    "Ternarize",
    "Metrics",
    "SlimError",
    "StaticQuant",
    "StructuredPruning",
    "UnsupportedModelError",
    "WeightOnlyQuant",
    "__version__",
    "Recipe",
    "compare",
    "compress",
    "convert",
    "load_recipe",
    "decompose",
    "finetune",
    "load",
    "measure",
    "prepare_qat",
    "QuantAwareTraining",
    "prune",
    "quant_sensitivity",
    "quantize",
    "save",
    "zoo",
]

#: layers and kernel switches exported here before the top level was trimmed to verbs, configs, errors and
#: records: name -> the module to import them from
_MOVED = {
    "LowRankLinear": "slimtorch.lowrank.modules",
    "LowRankConv2d": "slimtorch.lowrank.modules",
    "SpatialSVDConv2d": "slimtorch.lowrank.modules",
    "Tucker2Conv2d": "slimtorch.lowrank.modules",
    "SparseLinear": "slimtorch.prune.sparse_linear",
    "NMSparseLinear": "slimtorch.prune.nm_linear",
    "use_nm_kernels": "slimtorch.prune.nm_linear",
}


def __getattr__(name: str):
    """``slimtorch.<moved name>`` still works, with a ``DeprecationWarning`` naming the import to use."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"slimtorch.{name} moved: use `from {_MOVED[name]} import {name}`", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'slimtorch' has no attribute {name!r}")
