"""Quantization: integer arithmetic, calibration observers, quantized modules and methods."""
