"""Binary and ternary weights (and binary activations): configs, the math on packed bits, the packed inference
layers, their training twins, and the ``st.quantize`` handler (registered on import)."""

from slimtorch.quant.binary.apply import convert_binary, prepare_binary, quantize_binary
from slimtorch.quant.binary.config import Binarize, Ternarize

__all__ = ["Binarize", "Ternarize", "convert_binary", "prepare_binary", "quantize_binary"]
