"""ONNX: export (with twins of slimtorch's compressed layers), the PyTorch-vs-ONNX-Runtime agreement check, and
ONNX Runtime sessions and their measurement. The only place ONNX concepts appear; above the families and
``measure``, below ``pipeline``."""
