#!/usr/bin/python3
"""A small numpy reader and writer for the safetensors format.

Debian 12 has no python3-safetensors and its torch 1.13 cannot read the format, so moe.cpp
ships these few lines (see docs in /work/shared/DESIGN.md, "Files").

Format: an 8-byte little-endian unsigned header length N, then N bytes of a JSON object
    {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
     "__metadata__": {"key": "string value", ...}}
padded with spaces to a multiple of 8, then the raw little-endian tensor data. Offsets are
relative to the first byte after the header.

    load(path)  -> (dict name -> np.ndarray, metadata dict)
    save(path, tensors, metadata=None)     # atomic: temp file, fsync, rename

BF16 tensors are returned as float32 (the 16 bits are the high half of a float32). Arrays
returned by load() own their memory (they are copies, not views of the file).

Run as a script to list a file:  tools/safetensors_np.py FILE [FILE...]
"""
import json
import os
import struct
import sys
import tempfile

import numpy as np

__all__ = ["load", "load_header", "save", "DTYPES"]

# safetensors dtype name -> little-endian numpy dtype of the stored bytes.
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "BF16": np.dtype("<u2"),  # converted to float32 on load
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
}
_NP_TO_ST = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("uint8"): "U8",
}
# The format caps the header at 100 MB; anything larger is a foreign or corrupt file.
MAX_HEADER = 100 << 20


def _parse_header(path, blob):
    """Validates the header of `blob` (the whole file). Returns (entries, metadata, data_start)
    where entries maps name -> (dtype name, shape tuple, begin, end)."""
    size = len(blob)
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file: {size} bytes, expected at least 8 "
                         f"(header length)")
    (n,) = struct.unpack("<Q", bytes(blob[:8]))
    if n > MAX_HEADER or n > size - 8:
        raise ValueError(f"{path}: not a safetensors file or truncated: header length {n} but "
                         f"the file has {size} bytes")
    try:
        header = json.loads(bytes(blob[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header must be a JSON object, "
                         f"got {type(header).__name__}")
    data_size = size - 8 - n
    metadata = {}
    entries = {}
    for name, v in header.items():
        if name == "__metadata__":
            if not isinstance(v, dict):
                raise ValueError(f"{path}: __metadata__ must be an object")
            for k, val in v.items():
                if not isinstance(val, str):
                    raise ValueError(f"{path}: __metadata__.{k} must be a string, "
                                     f"got {type(val).__name__}")
                metadata[k] = val
            continue
        if not (isinstance(v, dict) and "dtype" in v and "shape" in v and "data_offsets" in v):
            raise ValueError(f"{path}: tensor '{name}' needs dtype, shape and data_offsets")
        dt = v["dtype"]
        if not isinstance(dt, str) or dt not in DTYPES:
            raise ValueError(f"{path}: tensor '{name}': unsupported dtype {dt!r} "
                             f"(supported: {', '.join(DTYPES)})")
        shape = v["shape"]
        if not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"{path}: tensor '{name}': bad shape {shape!r}")
        off = v["data_offsets"]
        if not (isinstance(off, list) and len(off) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in off)):
            raise ValueError(f"{path}: tensor '{name}': data_offsets must be [begin, end], "
                             f"got {off!r}")
        begin, end = off
        if begin > end or end > data_size:
            raise ValueError(f"{path}: truncated or corrupt: tensor '{name}' spans bytes "
                             f"[{begin}, {end}) but the data section has {data_size} bytes")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dt].itemsize
        if end - begin != expected:
            raise ValueError(f"{path}: tensor '{name}': {end - begin} bytes for shape {shape} "
                             f"of {dt}, expected {expected}")
        entries[name] = (dt, tuple(shape), begin, end)
    # Overlap: sort the non-empty ranges; each must start at or after the previous one's end.
    # (Empty tensors occupy no bytes and cannot overlap anything.)
    ranges = sorted((b, e, k) for k, (_, _, b, e) in entries.items() if e > b)
    for (b0, e0, k0), (b1, e1, k1) in zip(ranges, ranges[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors '{k0}' [{b0}, {e0}) and '{k1}' [{b1}, {e1}) "
                             f"overlap in the data section")
    return entries, metadata, 8 + n


def load_header(path):
    """Returns ({name: (dtype name, shape tuple)}, metadata) without converting any data."""
    with open(path, "rb") as f:
        blob = f.read()
    entries, metadata, _ = _parse_header(path, blob)
    return {k: (dt, shape) for k, (dt, shape, _, _) in entries.items()}, metadata


def load(path):
    """Reads a safetensors file. Returns (dict name -> np.ndarray, metadata dict of str -> str).
    Raises ValueError naming the file (and tensor) if the file is malformed."""
    with open(path, "rb") as f:
        blob = f.read()
    entries, metadata, start = _parse_header(path, blob)
    out = {}
    for name, (dt, shape, begin, end) in entries.items():
        raw = np.frombuffer(blob, dtype=DTYPES[dt], count=(end - begin) // DTYPES[dt].itemsize,
                            offset=start + begin)
        if dt == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.astype(DTYPES[dt].newbyteorder("="), copy=True)
        out[name] = arr.reshape(shape)
    return out, metadata


def save(path, tensors, metadata=None):
    """Writes `tensors` (dict name -> array-like; float64/float32/int64/int32/uint8) with string
    `metadata` to `path` atomically: a temporary file in the same directory is written,
    flushed, fsynced and renamed over `path`. Tensors are laid out in the dict's order."""
    path = os.fspath(path)
    header = {}
    chunks = []
    off = 0
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"{path}: bad tensor name {name!r}")
        a = np.asarray(t)
        if a.dtype == np.bool_:
            a = a.astype(np.uint8)
        native = a.dtype.newbyteorder("=")  # big-endian input is byte-swapped on write
        if native not in _NP_TO_ST:
            raise ValueError(f"{path}: tensor '{name}': unsupported numpy dtype {a.dtype} "
                             f"(use float64/float32/int64/int32/uint8)")
        st = _NP_TO_ST[native]
        data = np.ascontiguousarray(a, dtype=DTYPES[st]).tobytes()
        header[name] = {"dtype": st, "shape": [int(s) for s in a.shape],
                        "data_offsets": [off, off + len(data)]}
        chunks.append(data)
        off += len(data)
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"{path}: __metadata__ keys and values must be strings "
                                 f"(JSON-encode anything else): {k!r}: {type(v).__name__}")
        header["__metadata__"] = dict(metadata)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable too
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(f"usage: {argv[0]} FILE.safetensors [...]  (lists names, dtypes, shapes)")
        return 0 if len(argv) >= 2 else 2
    rc = 0
    for path in argv[1:]:
        try:
            entries, metadata = load_header(path)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
            continue
        total = sum(int(np.prod(s, dtype=np.int64)) * DTYPES[dt].itemsize
                    for dt, s in entries.values())
        print(f"{path}: {len(entries)} tensors, {total} data bytes")
        w = max((len(k) for k in entries), default=0)
        for name in sorted(entries):
            dt, shape = entries[name]
            print(f"  {name:<{w}}  {dt:<4}  {list(shape)}")
        for k in sorted(metadata):
            v = metadata[k]
            print(f"  __metadata__.{k} = {v if len(v) <= 200 else v[:200] + '...'}")
    return rc


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv))
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
