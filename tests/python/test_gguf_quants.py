#!/usr/bin/python3
"""Our GGUF (de)quantizers and reader/writer against gguf-py, bit for bit.

Run by ctest as:  /usr/bin/python3 tests/python/test_gguf_quants.py <build_dir>
with GGUF_PY (the gguf-py directory of the llama.cpp reference, `cmake --build build --target
llama_ref`) and MOE_BIN (its directory holds moe_gguf_tool, tools/gguf_tool.cpp).

Dequantize: gguf-py writes a GGUF of random tensors in F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K
(quantized types as random raw blocks: every quant bit pattern, f16 scales that are finite but of
either sign, normal or subnormal; F32/F16/BF16 with Inf, NaN and subnormals), `moe_gguf_tool
dequant` turns it into f32 safetensors, and each tensor must equal gguf.quants.dequantize bit for
bit. Quantize: random f32 (ties, zero rows, huge and tiny values, NaN for BF16) through
`moe_gguf_tool quantize` must give the bytes of gguf.quants.quantize exactly, and gguf-py's
GGUFReader must read our file's metadata and tensor names, types and shapes.
"""
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
    print(f"test_gguf_quants: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def _import_gguf():
    path = os.environ.get("GGUF_PY")
    if not path or not os.path.isdir(os.path.join(path, "gguf")):
        _die(f"GGUF_PY={path!r} is not gguf-py's directory; build the reference first: "
             "cmake --build build --target llama_ref")
    sys.path.insert(0, path)
    import gguf  # noqa: E402
    return gguf


def _tool():
    build = BUILD_DIR
    if not build and os.environ.get("MOE_BIN"):
        build = os.path.dirname(os.environ["MOE_BIN"])
    exe = os.path.join(build, "moe_gguf_tool") if build else None
    if not exe or not os.access(exe, os.X_OK):
        _die(f"moe_gguf_tool not found at {exe!r} (set MOE_BIN or pass the build directory; "
             "cmake --build build --target moe_gguf_tool)")
    return exe


def _run(*args):
    r = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"moe_gguf_tool {' '.join(args)} failed: {r.stderr.strip()}")


RNG = np.random.default_rng(20261206)


def _f16_scales(n):
    """n finite f16 bit patterns of either sign: half normal, half subnormal (and zeros)."""
    normal = RNG.integers(0x0400, 0x7c00, n, dtype=np.uint16)  # exponent 1..30
    sub = RNG.integers(0x0000, 0x0400, n, dtype=np.uint16)  # exponent 0
    bits = np.where(RNG.random(n) < 0.5, normal, sub)
    bits |= (RNG.random(n) < 0.5).astype(np.uint16) << 15
    return bits


def _raw_blocks(qtype, rows, cols, scale_offsets):
    """Random blocks of a quantized type (rows x cols elements): random bytes, with sane f16
    scales at the given byte offsets of each block."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    b = RNG.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in scale_offsets:
        b[:, off:off + 2] = _f16_scales(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return b.reshape(rows, cols // block * size)


def _special_f32(n):
    """Random floats over all magnitudes plus Inf, NaNs with payloads, subnormals and -0."""
    bits = RNG.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001, 0x7fbfffff,
                        0x00000001, 0x807fffff, 0x80000000, 0x00000000], dtype=np.uint32)
    bits[:len(special)] = special
    return bits.view(np.float32)


def _bits32(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


class Dequantize(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        Q = gguf.GGMLQuantizationType
        cls.tmp = tempfile.TemporaryDirectory()
        path = os.path.join(cls.tmp.name, "ref.gguf")
        w = gguf.GGUFWriter(path, "llama")
        cls.expected = {}
        f32 = _special_f32(4 * 96).reshape(4, 96)
        w.add_tensor("f32", f32)
        cls.expected["f32"] = f32
        f16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(
            2, 128, 256)
        w.add_tensor("f16", f16)
        cls.expected["f16"] = gguf.quants.dequantize(f16, Q.F16)
        bf16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(256, 512)
        w.add_tensor("bf16", bf16, raw_dtype=Q.BF16)
        cls.expected["bf16"] = gguf.quants.dequantize(bf16, Q.BF16)
        # name, type, rows, cols, byte offsets of the f16 scales in a block
        for name, q, rows, cols, offs in [("q8_0", Q.Q8_0, 64, 512, [0]),
                                          ("q4_0", Q.Q4_0, 64, 512, [0]),
                                          ("q4_k", Q.Q4_K, 32, 1024, [0, 2]),
                                          ("q6_k", Q.Q6_K, 32, 1024, [208])]:
            raw = _raw_blocks(q, rows, cols, offs)
            w.add_tensor(name, raw, raw_dtype=q)
            cls.expected[name] = gguf.quants.dequantize(raw, q)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        out = os.path.join(cls.tmp.name, "ours.safetensors")
        _run("dequant", path, out)
        cls.ours, _ = st.load(out)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check(self, name):
        ref = self.expected[name]
        got = self.ours[name]
        self.assertEqual(got.dtype, np.float32, name)
        self.assertEqual(tuple(got.shape), tuple(ref.shape), name)
        a, b = _bits32(got), _bits32(ref)
        bad = np.flatnonzero(a.ravel() != b.ravel())
        if bad.size:
            i = bad[0]
            self.fail(f"{name}: {bad.size} of {a.size} values differ; first at {i}: "
                      f"ours {a.ravel()[i]:#010x} gguf-py {b.ravel()[i]:#010x}")

    def test_f32(self):
        self.check("f32")

    def test_f16_every_pattern(self):
        self.check("f16")

    def test_bf16_every_pattern(self):
        self.check("bf16")

    def test_q8_0(self):
        self.check("q8_0")

    def test_q4_0(self):
        self.check("q4_0")

    def test_q4_k(self):
        self.check("q4_k")

    def test_q6_k(self):
        self.check("q6_k")

    def test_names(self):
        self.assertEqual(sorted(self.ours), sorted(self.expected))


def _quantize_inputs():
    """f32 tensors (rows x 64) that probe rounding: random rows at several scales, Q8_0 ties
    (amax 127 → d = 1 and amax 63.5 → d = 0.5, values at k + 0.5 steps), zero rows, huge and tiny
    magnitudes, f16/bf16 rounding ties, overflow and subnormal edges."""
    rows = [RNG.standard_normal(64) * s for s in (1e-3, 0.1, 1.0, 37.0, 1e4)]
    ties = np.arange(64) - 31.5
    rows.append(np.concatenate([[127.0], ties[1:]]))
    rows.append(np.concatenate([[63.5], ties[1:] / 2]))
    rows.append(np.zeros(64))
    rows.append(np.concatenate([np.zeros(32), np.full(32, -0.0)]))
    rows.append(RNG.standard_normal(64) * 1e30)
    rows.append(RNG.standard_normal(64) * 1e-30)
    half_ties = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 65504, 65519.99, 65520, 1e6, 2.0**-25,
                 1.5 * 2.0**-25, 2.0**-26, 2.0**-14 - 2.0**-25, 6.1e-5, -1 - 2.0**-11]
    rows.append(np.resize(np.array(half_ties), 64))
    bits = np.array([0x3f808000, 0x3f818000, 0x3f807fff, 0x7f7fffff, 0x00008000, 0x80018000,
                     0x3f80c000, 0xbf808000], dtype=np.uint32)
    rows.append(np.resize(bits.view(np.float32).astype(np.float64), 64))
    x = np.stack(rows).astype(np.float32)
    return x


class Quantize(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        x = _quantize_inputs()
        nan = np.array([0x7fc00000, 0xffc00000, 0x7f800001, 0xff812345, 0x7fffffff],
                       dtype=np.uint32).view(np.float32)
        x_nan = x.copy()
        x_nan[-1, :nan.size] = nan
        cls.inputs = {"w": x, "w3": x[:12].reshape(3, 4, 64).copy(), "x_nan": x_nan}
        cls.src = os.path.join(cls.tmp.name, "in.safetensors")
        st.save(cls.src, cls.inputs)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def roundtrip(self, type_name, names):
        Q = gguf.GGMLQuantizationType
        qtype = Q[type_name]
        out = os.path.join(self.tmp.name, f"out_{type_name}.gguf")
        _run("quantize", self.src, type_name, out)
        r = gguf.GGUFReader(out)
        f = r.fields
        self.assertEqual(f["general.architecture"].contents(), "moe-test")
        self.assertEqual(f["general.name"].contents(), "in.safetensors")
        self.assertEqual(f["test.type"].contents(), type_name)
        self.assertEqual(f["test.count"].contents(), 3)
        self.assertEqual(f["test.count"].types, [gguf.GGUFValueType.UINT32])
        self.assertEqual(f["test.scale"].contents(), 0.5)
        self.assertEqual(f["test.flag"].contents(), True)
        self.assertEqual(f["test.ids"].contents(), [1, -2, 3])
        self.assertEqual(f["test.words"].contents(), ["a", "bc"])
        self.assertEqual(f["GGUF.version"].contents(), 3)
        tensors = {t.name: t for t in r.tensors}
        self.assertEqual(sorted(tensors), sorted(self.inputs))
        for name in names:
            x = self.inputs[name]
            t = tensors[name]
            self.assertEqual(t.tensor_type, qtype, name)
            self.assertEqual(list(t.shape), list(reversed(x.shape)), name)  # ne order
            ref = gguf.quants.quantize(x, qtype)
            ours = np.ascontiguousarray(t.data).view(np.uint8).ravel()
            want = np.ascontiguousarray(ref).view(np.uint8).ravel()
            self.assertEqual(ours.size, want.size, name)
            bad = np.flatnonzero(ours != want)
            if bad.size:
                i = bad[0]
                self.fail(f"{type_name} {name}: {bad.size} of {want.size} bytes differ; first at "
                          f"byte {i}: ours {ours[i]:#04x} gguf-py {want[i]:#04x}")

    def test_f32(self):
        self.roundtrip("F32", ["w", "w3", "x_nan"])

    def test_f16(self):
        self.roundtrip("F16", ["w", "w3", "x_nan"])

    def test_bf16(self):
        self.roundtrip("BF16", ["w", "w3", "x_nan"])

    def test_q8_0(self):
        # x_nan is left out: a NaN in a block makes numpy cast NaN to int8, which C leaves undefined.
        self.roundtrip("Q8_0", ["w", "w3"])


def _field_value(field):
    """A GGUFReader field's value (strings decoded like our dump: invalid UTF-8 replaced)."""
    T = gguf.GGUFValueType

    def one(i, t):
        part = field.parts[i]
        if t == T.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        v = part.tolist()[0]
        return bool(v) if t == T.BOOL else v

    if field.types[0] == T.ARRAY:
        return [one(i, field.types[-1]) for i in field.data]
    return one(field.data[0], field.types[0])


class RealFiles(unittest.TestCase):
    """llama.cpp's own vocab GGUFs (models/ggml-vocab-*.gguf, written by convert_hf_to_gguf.py):
    our reader must see the same metadata (order, types, values) and tensors as GGUFReader. The
    four smallest of the SPM and BPE kinds (GGUFReader takes seconds per 50k tokens); all of them
    pass too (MOE_GGUF_ALL_VOCABS=1 checks every one)."""

    SMALL = ["ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf",
             "ggml-vocab-deepseek-coder.gguf", "ggml-vocab-gpt-2.gguf"]

    def test_vocab_files(self):
        models = os.path.join(os.environ["GGUF_PY"], "..", "models")
        files = self.SMALL
        if os.environ.get("MOE_GGUF_ALL_VOCABS"):
            files = sorted(f for f in os.listdir(models) if f.endswith(".gguf"))
        for name in files:
            path = os.path.join(models, name)
            with self.subTest(file=name):
                r = subprocess.run([TOOL, "dump", path], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                ours = json.loads(r.stdout)
                ref = gguf.GGUFReader(path)
                fields = [f for f in ref.fields.values() if not f.name.startswith("GGUF.")]
                self.assertEqual([m["key"] for m in ours["metadata"]], [f.name for f in fields])
                for m, f in zip(ours["metadata"], fields):
                    self.assertEqual(m["type"], [t.name for t in f.types], m["key"])
                    self.assertEqual(m["value"], _field_value(f), m["key"])
                self.assertEqual(ours["version"], ref.fields["GGUF.version"].contents())
                self.assertEqual(ours["alignment"], ref.alignment)
                self.assertEqual([(t["name"], t["type"], t["ne"], t["offset"]) for t in ours["tensors"]],
                                 [(t.name, t.tensor_type.name, [int(d) for d in t.shape],
                                   t.data_offset) for t in ref.tensors])


if __name__ == "__main__":
    if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
        BUILD_DIR = sys.argv.pop(1)
    gguf = _import_gguf()
    TOOL = _tool()
    unittest.main()
