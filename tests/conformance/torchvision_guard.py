"""Import torchvision's pure-Python model definitions beside the CPU build of torch.

PyPI's torchvision wheels carry compiled operators (``torchvision/_C.so``) linked against a CUDA build of torch;
beside the CPU torch 2.13.0 that extension cannot load, and ``import torchvision`` then fails while registering
fake kernels for operators that were never defined (``operator torchvision::nms does not exist``). The model
definitions (ResNet, ViT, ...) need none of those operators. When the extension is missing, this guard defines
the operators' schemas (no kernels) in the ``torchvision`` namespace, so the import succeeds and any call of a
detection operator fails loudly ("no kernel"). The installed package is never changed. Import this module before
the first ``import torchvision`` (tests/conftest.py does; timm imports torchvision too).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

#: the schemas of torchvision 0.28's compiled operators (torchvision/csrc/ops/*.cpp)
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) "
    "-> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)

_LIBRARY: torch.library.Library | None = None


def _extension_loads(package_dir: Path) -> bool:
    """True when torchvision's compiled extension loads beside this torch."""
    try:
        torch.ops.load_library(next(package_dir.glob("_C*.so")))
    except (OSError, RuntimeError, StopIteration):
        return False
    return True


def install() -> bool:
    """Make ``import torchvision`` work; returns False when torchvision is not installed at all."""
    global _LIBRARY
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _LIBRARY is None and not hasattr(torch.ops.torchvision, "nms"):
        if not _extension_loads(Path(next(iter(spec.submodule_search_locations)))):
            _LIBRARY = torch.library.Library("torchvision", "DEF")
            for schema in _SCHEMAS:
                _LIBRARY.define(schema)
    return True
