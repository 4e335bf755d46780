"""Pruning: unstructured, N:M, structured (channels, heads), layer removal, and their schedules. The configs are
in :mod:`.config`; each method's module registers its handler (``import slimtorch`` imports them all)."""

from slimtorch.prune.config import (
    GradualPruning,
    IterativePruning,
    LayerPruning,
    NMPruning,
    StructuredPruning,
    UnstructuredPruning,
)

__all__ = ["GradualPruning", "IterativePruning", "LayerPruning", "NMPruning", "StructuredPruning",
           "UnstructuredPruning"]
