"""What XLA says about a compiled program: its peak memory and its cost analysis.

Shared by the step benchmark and the ahead-of-time check so both report memory the same way.
"""

from __future__ import annotations


def peak_bytes(compiled) -> int:
    """XLA's peak memory of one device for the program (its buffer assignment's peak where the
    backend reports it, else arguments + outputs + temporaries - donated aliases)."""
    analysis = compiled.memory_analysis()
    peak = int(getattr(analysis, "peak_memory_in_bytes", 0) or 0)
    if peak:
        return peak
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def cost(compiled) -> dict:
    """XLA's cost analysis of the (per-device) program: ``flops``, ``bytes accessed``, ..."""
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis) or {}
