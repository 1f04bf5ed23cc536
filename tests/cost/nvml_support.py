"""What NVML itself reports about this machine's GPUs, read without mlflow_finops (the expected side)."""

from __future__ import annotations


def nvml_gpu_models() -> tuple[str, ...]:
    """The GPU names NVML lists, in index order; none without the library, a driver or a GPU."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        names = [pynvml.nvmlDeviceGetName(h) for h in handles]
    except pynvml.NVMLError:
        return ()
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def gpu_models_tag() -> str:
    """The ``finops.machine.gpu_models`` tag this machine should get."""
    return ",".join(nvml_gpu_models()) or "none"
