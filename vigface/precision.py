"""The float precision that sampling and training run their forward passes in.

``auto`` takes bf16 autocast where the hardware has bf16 arithmetic: every CUDA card this
project targets, and CPUs with native bf16 instructions (x86 ``avx512_bf16`` / ``amx_bf16``,
Arm ``bf16``), where oneDNN's bf16 GEMMs make the compiled demo sampler 1.4-1.7x faster than
in fp32 (``bench/sampler.py``: ``sampler_img_per_s`` against ``fp32_sampler_img_per_s``).
Elsewhere bf16 would be emulated and slower, so ``auto`` stays in fp32. Sampled images from
bf16 and fp32 differ by under one 8-bit level on average (``bench/sampler.py`` prints it); a
shard is byte-reproducible under the same precision on the same kind of machine.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # torch is imported where it is used: the API process reads only the names
    import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """Whether the first ``flags`` (x86) or ``Features`` (Arm) line of a /proc/cpuinfo text
    lists a bf16 arithmetic extension."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return bool(_NATIVE_BF16_FLAGS & set(value.split()))
    return False


@lru_cache
def cpu_has_native_bf16() -> bool:
    """This machine's answer (Linux; False where /proc/cpuinfo cannot be read)."""
    try:
        return cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, for cards and reports."""
    return str(dtype).removeprefix("torch.")


def autocast(device: torch.device, precision: str = "auto"):
    """``torch.autocast`` in bf16 when ``precision`` resolves to it on ``device``, else off."""
    import torch

    dtype = autocast_dtype(precision, device)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype == torch.bfloat16)


def describe_cpu() -> str:
    """One line for benchmark output: CPU model and whether bf16 is native."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{name}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"
