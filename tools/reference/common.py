"""Pieces shared by the layer reference scripts (moe_layer.py, peer_layer.py)."""
import argparse
import os

import numpy as np
import torch

import safetensors_np  # tools/ is on sys.path (the scripts put it there before importing this)

DT = torch.float64
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def to64(d):
    return {k: v.to(DT) for k, v in d.items()}


def max_diff(a, b):
    return (torch.as_tensor(a, dtype=DT) - torch.as_tensor(b, dtype=DT)).abs().max().item()


def parse_case_args(doc, cases):
    """--out-dir, --check, --no-check and a list of case names (default: all of `cases`)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out-dir", default=os.path.join(REPO, "tests", "fixtures"))
    ap.add_argument("--check", action="store_true", help="run the sanity checks, write nothing")
    ap.add_argument("--no-check", action="store_true", help="skip the sanity checks")
    ap.add_argument("cases", nargs="*", metavar="NAME",
                    help=f"which cases (default: all of {', '.join(cases)})")
    args = ap.parse_args()
    for key in args.cases:
        if key not in cases:
            ap.error(f"unknown case {key!r}; choose from {', '.join(cases)}")
    args.cases = args.cases or list(cases)
    return args


def write_fixture(out_dir, filename, out, meta, max_bytes=None):
    """Writes one fixture, reads it back, checks it round-trips exactly and (when max_bytes is
    given) stays under max_bytes, as fixtures are committed; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    safetensors_np.save(path, out, meta)
    back, meta2 = safetensors_np.load(path)
    assert meta2 == meta and sorted(back) == sorted(out)
    for k in out:
        assert np.array_equal(back[k], out[k]), k
    size = os.path.getsize(path)
    assert max_bytes is None or size < max_bytes, f"{path}: {size} bytes"
    return path
