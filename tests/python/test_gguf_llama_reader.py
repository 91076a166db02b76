#!/usr/bin/python3
"""Our GGUF reader's accept/refuse decisions against llama.cpp's own gguf_init_from_file.

Run by ctest as:  /usr/bin/python3 tests/python/test_gguf_llama_reader.py <build_dir>
with LLAMA_REF (the llama.cpp reference harness; its lib/ holds the prebuilt libggml-base.so,
`cmake --build build --target llama_ref`), MOE_BIN (its directory holds moe_gguf_tool) and
PYTHONPATH=tools.

A file written by our writer (moe_gguf_tool quantize) must load in llama.cpp with the same
tensors and offsets. Then hundreds of random corruptions of its header bytes: whatever llama.cpp
refuses we must refuse too, and where we refuse a file llama.cpp accepts, it must be for one of the
checks we make beyond gguf_init_from_file: tensor data past the end of the file (llama.cpp checks
that later, in its model loader) or a bool byte other than 0 or 1.
"""
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))  # also works without PYTHONPATH
import safetensors_np as st  # noqa: E402

BUILD_DIR = None  # set from argv in __main__


def _die(msg):
    print(f"test_gguf_llama_reader: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


class _Params(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_QUIET = _LOG_CB(lambda level, text, user: None)  # kept alive for the whole run


def _load_ggml():
    ref = os.environ.get("LLAMA_REF")
    lib = os.path.join(os.path.dirname(ref), "lib", "libggml-base.so") if ref else None
    if not lib or not os.path.exists(lib):
        _die(f"libggml-base.so not found (LLAMA_REF={ref!r}); build the reference first: "
             "cmake --build build --target llama_ref")
    g = ctypes.CDLL(lib)
    g.gguf_init_from_file.restype = ctypes.c_void_p
    g.gguf_init_from_file.argtypes = [ctypes.c_char_p, _Params]
    g.gguf_free.argtypes = [ctypes.c_void_p]
    for f, r in [("gguf_get_n_tensors", ctypes.c_int64), ("gguf_get_n_kv", ctypes.c_int64),
                 ("gguf_get_data_offset", ctypes.c_size_t)]:
        getattr(g, f).restype = r
        getattr(g, f).argtypes = [ctypes.c_void_p]
    g.gguf_get_tensor_name.restype = ctypes.c_char_p
    g.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.gguf_get_tensor_offset.restype = ctypes.c_size_t
    g.gguf_get_tensor_offset.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.gguf_get_tensor_type.restype = ctypes.c_int
    g.gguf_get_tensor_type.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.ggml_log_set.argtypes = [_LOG_CB, ctypes.c_void_p]
    g.ggml_log_set(_QUIET, None)
    return g


def _tool():
    build = BUILD_DIR
    if not build and os.environ.get("MOE_BIN"):
        build = os.path.dirname(os.environ["MOE_BIN"])
    exe = os.path.join(build, "moe_gguf_tool") if build else None
    if not exe or not os.access(exe, os.X_OK):
        _die(f"moe_gguf_tool not found at {exe!r} (set MOE_BIN or pass the build directory)")
    return exe


def _ours(path):
    """(True, dump) if our reader accepts the file, else (False, error line)."""
    r = subprocess.run([TOOL, "dump", path], capture_output=True, text=True, errors="replace")
    if r.returncode == 0:
        return True, json.loads(r.stdout)
    return False, r.stderr.strip()


def _theirs(path):
    ctx = GGML.gguf_init_from_file(path.encode(), _Params(True, None))
    if not ctx:
        return False
    GGML.gguf_free(ctx)
    return True


# Checks we make that gguf_init_from_file (without allocating the data) does not.
EXTRA_CHECKS = ("lies past the end of the data section", "has bool value",
                "past the end of the file")


class AgreesWithLlamaCpp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(7)
        src = os.path.join(cls.tmp.name, "in.safetensors")
        st.save(src, {"a.weight": rng.standard_normal((3, 64)).astype(np.float32),
                      "b.weight": rng.standard_normal((2, 2, 32)).astype(np.float32),
                      "c.bias": rng.standard_normal(32).astype(np.float32)})
        cls.path = os.path.join(cls.tmp.name, "ours.gguf")
        r = subprocess.run([TOOL, "quantize", src, "Q8_0", cls.path], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise AssertionError(r.stderr)
        with open(cls.path, "rb") as f:
            cls.bytes = f.read()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_llama_cpp_reads_our_file(self):
        ok, dump = _ours(self.path)
        self.assertTrue(ok, dump)
        ctx = GGML.gguf_init_from_file(self.path.encode(), _Params(True, None))
        self.assertTrue(ctx, "llama.cpp refused our file")
        try:
            self.assertEqual(GGML.gguf_get_n_kv(ctx), len(dump["metadata"]))
            n = GGML.gguf_get_n_tensors(ctx)
            self.assertEqual(n, len(dump["tensors"]))
            base = GGML.gguf_get_data_offset(ctx)
            for i, t in enumerate(dump["tensors"]):
                self.assertEqual(GGML.gguf_get_tensor_name(ctx, i).decode(), t["name"])
                self.assertEqual(GGML.gguf_get_tensor_type(ctx, i), 8)  # GGML_TYPE_Q8_0
                self.assertEqual(base + GGML.gguf_get_tensor_offset(ctx, i), t["offset"])
        finally:
            GGML.gguf_free(ctx)

    def test_random_header_corruptions(self):
        ok, dump = _ours(self.path)
        self.assertTrue(ok, dump)
        header_end = dump["tensors"][0]["offset"]  # the data section starts here
        rng = np.random.default_rng(2026)
        bad = os.path.join(self.tmp.name, "bad.gguf")
        counts = {"both accept": 0, "both refuse": 0, "we refuse more": 0}
        for trial in range(400):
            b = bytearray(self.bytes)
            at = int(rng.integers(0, header_end))
            if trial % 2 == 0:
                b[at] = int(rng.integers(0, 256))
            else:
                v = int(rng.integers(0, 2**63, dtype=np.uint64)) >> int(rng.integers(0, 64))
                chunk = v.to_bytes(8, "little")[:max(0, min(8, header_end - at))]
                b[at:at + len(chunk)] = chunk
            with open(bad, "wb") as f:
                f.write(b)
            ours, why = _ours(bad)
            theirs = _theirs(bad)
            where = f"trial {trial}, byte {at}"
            if not theirs:
                self.assertFalse(ours, f"{where}: llama.cpp refuses, we accept")
                self.assertTrue(why.startswith(f"moe_gguf_tool: {bad}: "), why)
                self.assertNotIn("\n", why)
                counts["both refuse"] += 1
            elif not ours:
                self.assertTrue(any(c in why for c in EXTRA_CHECKS),
                                f"{where}: we refuse what llama.cpp accepts: {why}")
                counts["we refuse more"] += 1
            else:
                counts["both accept"] += 1
        print(f"random header corruptions: {counts}", file=sys.stderr)
        self.assertGreater(counts["both refuse"], 100, counts)


if __name__ == "__main__":
    if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
        BUILD_DIR = sys.argv.pop(1)
    GGML = _load_ggml()
    TOOL = _tool()
    unittest.main()
