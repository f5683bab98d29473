"""What XLA says about a compiled program: its memory and its cost analysis.

Shared by the step benchmark and the ahead-of-time check, so the memory formula is written once.
The two figures differ: XLA:CPU's reported peak of a train step leaves out most of what is live
(measured: 4.9 MB reported for ``configs/base.py:debug``'s step, whose live buffers hold
112 MB), so the step benchmark reports ``live_bytes`` on every backend and the ahead-of-time
check, whose targets are TPUs, ``peak_bytes``.
"""

from __future__ import annotations


def live_bytes(compiled) -> int:
    """Arguments + outputs + temporaries - donated aliases of one device, from XLA's memory
    analysis: every buffer the program holds, counted once."""
    analysis = compiled.memory_analysis()
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def peak_bytes(compiled) -> int:
    """XLA's peak memory of one device for the program: its buffer assignment's peak where the
    backend reports it, else ``live_bytes``."""
    peak = int(getattr(compiled.memory_analysis(), "peak_memory_in_bytes", 0) or 0)
    return peak or live_bytes(compiled)


def cost(compiled) -> dict:
    """XLA's cost analysis of the (per-device) program: ``flops``, ``bytes accessed``, ..."""
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis) or {}
