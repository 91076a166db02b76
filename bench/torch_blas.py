"""Which OpenBLAS kernels the PyTorch side of a benchmark runs on (shared by bench/pytorch_*.py).

Debian's torch calls the system libblas (OpenBLAS); its DYNAMIC_ARCH picks kernels at load time,
so each benchmark reports the core type it actually got next to moe.cpp's.
"""
import ctypes

import torch


def blas_core():
    """(core type, library path) of the OpenBLAS torch loaded, or ("unknown ...", "")."""
    torch.mm(torch.ones(8, 8), torch.ones(8, 8))  # make sure the BLAS library is loaded
    try:
        libs = sorted({l.split()[-1] for l in open("/proc/self/maps")
                       if "openblas" in l.split()[-1] and ".so" in l.split()[-1]})
        for lib in libs:
            h = ctypes.CDLL(lib)
            if hasattr(h, "openblas_get_corename"):
                h.openblas_get_corename.restype = ctypes.c_char_p
                return h.openblas_get_corename().decode(), lib
    except OSError:
        pass
    return "unknown (no OpenBLAS loaded)", ""
