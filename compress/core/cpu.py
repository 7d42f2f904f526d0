"""The CPU the numbers are taken on, and the class of int8-cpu file it wants."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD features that decide onnxruntime's INT8 kernels (VNNI avoids u8s8 saturation)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma"})


CPU_CLASSES = ("vnni", "avx2")  # what an int8-cpu file is made for: see cpu_class


def cpu_class(machine: str, flags) -> str:
    """The int8-cpu file a CPU wants, from its architecture and flags alone: `avx2` for x86 without VNNI (the
    u8s8 kernels saturate 8-bit weights), else `vnni`."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "vnni"  # Arm's int8 dot products accumulate in 32 bits: nothing saturates
    return "vnni" if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags) else "avx2"


def this_cpu_class() -> str:
    import platform


    return cpu_class(platform.machine(), cpu_flags())
