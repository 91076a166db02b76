#!/usr/bin/python3
"""The numpy safetensors reader/writer (tools/safetensors_np.py) against the C++ writer.

Run by ctest as:  /usr/bin/python3 tests/python/test_safetensors_np.py <build_dir>
with PYTHONPATH=<repo>/tools. <build_dir>/moe_st_writer (tools/st_writer.cpp) writes a file whose
contents are given by formulas; this test recomputes them independently and compares exactly.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))  # also works without PYTHONPATH
import safetensors_np as st  # noqa: E402

BUILD_DIR = None  # set from argv in __main__


def _writer():
    build = BUILD_DIR or os.environ.get("MOE_BUILD_DIR")
    if not build and os.environ.get("MOE_BIN"):
        build = os.path.dirname(os.environ["MOE_BIN"])
    return os.path.join(build, "moe_st_writer") if build else None


def _raw_file(header, data=b"", pad=True, length=None):
    """Builds safetensors bytes by hand (header dict or raw bytes) for the malformed-file tests."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        hb += b" " * ((8 - len(hb) % 8) % 8)
    n = len(hb) if length is None else length
    return struct.pack("<Q", n) + hb + data


class TestCppWriter(unittest.TestCase):
    """Reads what moe::write_safetensors wrote and checks it against the formulas."""

    @classmethod
    def setUpClass(cls):
        exe = _writer()
        if not exe or not os.path.exists(exe):
            raise AssertionError(
                f"moe_st_writer not found (looked for {exe!r}); pass the build directory as "
                f"argv[1] and build the target moe_st_writer")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.path = os.path.join(cls.tmp.name, "cpp.safetensors")
        subprocess.run([exe, cls.path], check=True)
        cls.t, cls.meta = st.load(cls.path)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check(self, name, dtype, expected):
        a = self.t[name]
        self.assertEqual(a.dtype, np.dtype(dtype), name)
        self.assertEqual(a.shape, expected.shape, name)
        np.testing.assert_array_equal(a, expected, err_msg=name)

    def test_names(self):
        self.assertEqual(sorted(self.t), sorted(
            ["a", "b", "c", "empty", "scalar", "layers.0.ffn.experts.w_up"]))

    def test_a_f32(self):
        self.check("a", np.float32,
                   (0.5 * np.arange(24, dtype=np.float64) - 3).astype(np.float32).reshape(2, 3, 4))

    def test_b_f64(self):
        self.check("b", np.float64, np.array([1.0 / (i + 1) for i in range(5)], dtype=np.float64))

    def test_c_i32(self):
        self.check("c", np.int32, np.array([i * i - 7 for i in range(6)], np.int32).reshape(3, 2))

    def test_empty(self):
        self.check("empty", np.float32, np.zeros((0, 4), np.float32))

    def test_scalar(self):
        self.check("scalar", np.float32, np.array(42.25, np.float32))
        self.assertEqual(self.t["scalar"].ndim, 0)

    def test_expert_stack(self):
        # The C++ side uses sinf (glibc's is correctly rounded for these arguments), so the
        # float64 sine rounded to float32 matches it exactly. (numpy's float32 sin need not.)
        ref = np.array([np.float32(np.sin(float(i))) for i in range(24)], np.float32)
        self.check("layers.0.ffn.experts.w_up", np.float32, ref.reshape(4, 3, 2))

    def test_metadata(self):
        self.assertEqual(self.meta, {"config": '{"model": {"d_model": 8}}', "step": "17"})
        self.assertEqual(json.loads(self.meta["config"]), {"model": {"d_model": 8}})

    def test_header_layout(self):
        with open(self.path, "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        self.assertEqual(n % 8, 0, "header must be padded to a multiple of 8")
        header = json.loads(blob[8:8 + n])
        ends = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        self.assertEqual(8 + n + ends, len(blob), "no trailing bytes after the data")


class TestRoundTrip(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_round_trip(self):
        rng = np.random.default_rng(0)
        tensors = {
            "f64": rng.standard_normal((3, 5)),
            "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
            "i32": rng.integers(-1000, 1000, (7,), dtype=np.int32),
            "i64": np.array([-(2**40), 0, 2**62], np.int64),
            "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
            "empty": np.zeros((0, 3), np.float64),
            "scalar": np.array(-1.5, np.float64),
            "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
            "big_endian": np.arange(6, dtype=">f8").reshape(2, 3),
            "strided": np.arange(20, dtype=np.float32)[::2],
        }
        meta = {"config": json.dumps({"model": {"d_model": 8}}), "step": "3", "unicode": "αβ"}
        path = os.path.join(self.dir, "rt.safetensors")
        st.save(path, tensors, meta)
        out, m = st.load(path)
        self.assertEqual(m, meta)
        self.assertEqual(sorted(out), sorted(tensors))
        for k, v in tensors.items():
            self.assertEqual(out[k].shape, v.shape, k)
            self.assertEqual(out[k].dtype, v.dtype.newbyteorder("="), k)
            np.testing.assert_array_equal(out[k], v, err_msg=k)
            self.assertTrue(out[k].flags.writeable, k)
        # Nothing left behind but the target (the temporary file was renamed).
        self.assertEqual(os.listdir(self.dir), ["rt.safetensors"])

    def test_no_metadata_and_overwrite(self):
        path = os.path.join(self.dir, "x.safetensors")
        st.save(path, {"a": np.ones(3)})
        st.save(path, {"b": np.zeros(2, np.float32)}, None)
        out, m = st.load(path)
        self.assertEqual(m, {})
        self.assertEqual(list(out), ["b"])

    def test_bf16_read_as_f32(self):
        vals = np.array([1.0, -2.5, 3.140625, 0.0, np.inf], np.float32)
        bits = (vals.view(np.uint32) >> 16).astype("<u2")
        blob = _raw_file({"x": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}},
                         bits.tobytes())
        path = os.path.join(self.dir, "bf16.safetensors")
        with open(path, "wb") as f:
            f.write(blob)
        out, _ = st.load(path)
        self.assertEqual(out["x"].dtype, np.float32)
        np.testing.assert_array_equal(out["x"], vals)

    def test_writer_rejects_bad_input(self):
        path = os.path.join(self.dir, "bad.safetensors")
        with self.assertRaises(ValueError):
            st.save(path, {"a": np.ones(2, np.float16)})
        with self.assertRaises(ValueError):
            st.save(path, {"a": np.ones(2)}, {"step": 3})
        with self.assertRaises(ValueError):
            st.save(path, {"__metadata__": np.ones(2)})
        self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(self.dir), [])


class TestMalformed(unittest.TestCase):
    """Every malformed file raises ValueError naming the file."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.good = os.path.join(self.tmp.name, "good.safetensors")
        st.save(self.good, {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                            "b": np.arange(4, dtype=np.float64)}, {"k": "v"})
        with open(self.good, "rb") as f:
            self.blob = f.read()

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, blob, name="bad.safetensors"):
        path = os.path.join(self.tmp.name, name)
        with open(path, "wb") as f:
            f.write(blob)
        return path

    def assertBad(self, blob, *fragments):
        path = self.write(blob)
        with self.assertRaises(ValueError) as cm:
            st.load(path)
        msg = str(cm.exception)
        self.assertIn(path, msg)
        for frag in fragments:
            self.assertIn(frag, msg)
        return msg

    def test_good_file_loads(self):
        out, m = st.load(self.good)
        self.assertEqual(m, {"k": "v"})

    def test_truncated_everywhere(self):
        # Every proper prefix fails cleanly: < 8 bytes, a cut header, or cut data.
        for n in range(len(self.blob)):
            with self.subTest(prefix=n):
                self.assertBad(self.blob[:n])

    def test_too_short(self):
        self.assertBad(b"", "at least 8")
        self.assertBad(b"\x00" * 7, "at least 8")

    def test_header_length_larger_than_file(self):
        body = self.blob[8:]
        self.assertBad(struct.pack("<Q", len(body) + 1) + body, "header length")
        self.assertBad(struct.pack("<Q", 2**63) + body, "header length")

    def test_not_json(self):
        self.assertBad(_raw_file(b"this is not json"), "JSON")
        self.assertBad(_raw_file(b"\xff\xfe{}"), "JSON")
        self.assertBad(_raw_file(b"[1, 2, 3]"), "JSON object")

    def test_overlapping_offsets(self):
        h = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
        self.assertBad(_raw_file(h, b"\0" * 24), "overlap", "'a'", "'b'")
        # Identical ranges overlap too.
        h = {"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
             "b": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}
        self.assertBad(_raw_file(h, b"\0" * 16), "overlap")

    def test_offsets_past_data(self):
        h = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
        self.assertBad(_raw_file(h, b"\0" * 12), "'a'")
        h = {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}
        self.assertBad(_raw_file(h, b"\0" * 12), "'a'")

    def test_size_mismatch(self):
        h = {"w": {"dtype": "F64", "shape": [2, 2], "data_offsets": [0, 16]}}
        self.assertBad(_raw_file(h, b"\0" * 32), "'w'", "expected 32")

    def test_bad_fields(self):
        cases = [
            {"w": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}},
            {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            {"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}},
            {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}},
            {"w": {"dtype": "F32", "shape": [1]}},
            {"w": [1, 2]},
            {"__metadata__": {"step": 3}},
            {"__metadata__": ["x"]},
        ]
        for h in cases:
            with self.subTest(header=h):
                self.assertBad(_raw_file(h, b"\0" * 8))

    def test_empty_tensor_inside_other_range_is_not_overlap(self):
        h = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
             "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [8, 8]}}
        out, _ = st.load(self.write(_raw_file(h, b"\0" * 16), "ok.safetensors"))
        self.assertEqual(out["e"].shape, (0, 4))

    def test_listing_main(self):
        r = subprocess.run([sys.executable, st.__file__, self.good], capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("a", r.stdout)
        self.assertIn("F32", r.stdout)
        self.assertIn("[2, 3]", r.stdout)
        bad = self.write(b"\x00" * 3)
        r = subprocess.run([sys.executable, st.__file__, bad], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("at least 8", r.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        BUILD_DIR = sys.argv.pop(1)
    unittest.main(verbosity=1)
