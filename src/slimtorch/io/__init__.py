"""Saving and loading models without pickle: safetensors and a JSON manifest (the storage floor)."""
