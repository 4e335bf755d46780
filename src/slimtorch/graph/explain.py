"""Readable printouts of a channel graph, for error messages, warnings and ``--verbose``."""

from __future__ import annotations

import warnings

from slimtorch.graph.groups import INPUT_REASON, OUTPUT_REASON, ChannelGraph, Group


def describe(group: Group, max_members: int = 8) -> str:
    """One line per group: size, constraints, state, producers and coupled parameters."""
    parts = [f"group {group.id}: {group.size} channels"]
    if group.block > 1:
        parts.append(f"{group.size // group.block} heads of {group.block}")
    if group.groups > 1:
        parts.append(f"{group.groups} equal parts")
    parts.append("prunable" if group.prunable else f"kept ({group.frozen or 'too small'})")
    members = [f"{m.param}[dim {m.dim}]" for m in group.members]
    more = f" +{len(members) - max_members} more" if len(members) > max_members else ""
    return (", ".join(parts) + f"; produced by {', '.join(group.producers) or '-'}; couples "
            + ", ".join(members[:max_members]) + more)


def explain(graph: ChannelGraph, max_members: int = 8) -> str:
    """Every group on its own line, then the ops the graph could not follow."""
    lines = [describe(g, max_members) for g in graph.groups]
    if graph.unsupported:
        lines.append("ops without a channel rule (their channels are kept): " + ", ".join(graph.unsupported))
    return "\n".join(lines)


def untouched(graph: ChannelGraph) -> list[str]:
    """Producing layers left untouched for a reason other than keeping the model's output shape."""
    return [f"{', '.join(g.producers) or f'group {g.id}'} ({g.frozen})" for g in graph.groups
            if g.frozen and g.frozen not in (OUTPUT_REASON, INPUT_REASON)]


def warn_untouched(graph: ChannelGraph) -> None:
    """Emit one ``UserWarning`` naming every layer left untouched and every op without a rule."""
    names = untouched(graph)
    if names or graph.unsupported:
        msg = "structured pruning leaves some channels untouched"
        if names:
            msg += "; layers kept: " + "; ".join(names)
        if graph.unsupported:
            msg += "; ops without a channel rule: " + ", ".join(graph.unsupported)
        warnings.warn(msg, UserWarning, stacklevel=3)
