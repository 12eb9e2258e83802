#!/usr/bin/python3
"""Writes the .npy fixtures that lukv's profile reader is tested against.

Run with Debian's NumPy (apt-get install python3-numpy):
    /usr/bin/python3 tools/make-npy-fixtures.py
Output: __tests__/fixtures/npy/*.npy and expected.json (the numbers every
valid file must decode to, in C order, plus a manifest of what each file is).
The script is deterministic, so rerunning it reproduces the committed files.
"""
import io
import json
import os
import struct

import numpy as np
from numpy.lib import format as npformat

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "__tests__", "fixtures", "npy")
GRID, LAYERS, KV_HEADS = 99, 2, 3


def prune_table(layers, kv_heads, seed):
    """A plausible profile: row i is compression ratio r=(i+1)/100 and head h
    prunes r + d_h*r*(1-r) with sum(d_h)=0, so every head is monotone in r,
    stays in [0, 1], and each row averages to r (before rounding to float32)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(-0.9, 0.9, size=layers * kv_heads)
    d -= d.mean()
    d = np.clip(d, -0.95, 0.95).reshape(layers, kv_heads)
    r = (np.arange(GRID) + 1) / (GRID + 1)
    table = r[:, None, None] + d[None, :, :] * (r * (1 - r))[:, None, None]
    # float32-representable values, so the f4 and f8 files hold the same numbers.
    return np.clip(table, 0.0, 1.0).astype(np.float32).astype(np.float64)


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def npy_bytes(arr, version=None):
    buf = io.BytesIO()
    npformat.write_array(buf, arr, version=version, allow_pickle=True)
    return buf.getvalue()


def crafted(header, payload, version=(1, 0)):
    """A file with a hand-written header (forms NumPy itself never writes but
    accepts, e.g. descr '=f8' or Python 2 'L' integers), padded as NumPy pads."""
    enc = "utf8" if version == (3, 0) else "latin1"
    head = header.encode(enc)
    fmt = "<H" if version == (1, 0) else "<I"
    pre = 6 + 2 + struct.calcsize(fmt)
    pad = 64 - (pre + len(head) + 1) % 64
    head = head + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(head)) + head + payload


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        if old.endswith(".npy") or old == "expected.json":
            os.remove(os.path.join(OUT, old))

    table = prune_table(LAYERS, KV_HEADS, seed=20260208)
    files = []

    def valid(name, arr, version, note=""):
        write(name, npy_bytes(arr, version))
        # Read back with NumPy to make sure the file means what the manifest says.
        back = np.load(os.path.join(OUT, name))
        assert back.shape == table.shape and np.array_equal(back.astype(np.float64), table), name
        files.append({
            "file": name,
            "version": "%d.0" % version[0],
            "descr": npformat.dtype_to_descr(arr.dtype),
            "fortranOrder": bool(arr.flags.f_contiguous and not arr.flags.c_contiguous),
            "note": note,
        })

    # The reference: what np.save writes for a float64 C-order array.
    buf = io.BytesIO()
    np.save(buf, table)
    write("plain.npy", buf.getvalue())
    files.append({"file": "plain.npy", "version": "1.0", "descr": "<f8", "fortranOrder": False,
                  "note": "np.save(table) of a float64 C-order array"})

    # Every byte order x width x memory order, header version 1.0.
    for order_name, order in (("le", "<"), ("be", ">")):
        for width in ("f4", "f8"):
            for mem in ("c", "f"):
                arr = table.astype(order + width)
                arr = np.asfortranarray(arr) if mem == "f" else np.ascontiguousarray(arr)
                valid("v1-%s-%s-%s.npy" % (order_name, width, mem), arr, (1, 0))

    # Header versions 2.0 (4-byte length) and 3.0 (4-byte length, utf8 header).
    valid("v2-le-f8-c.npy", table.astype("<f8"), (2, 0))
    valid("v2-be-f4-f.npy", np.asfortranarray(table.astype(">f4")), (2, 0))
    valid("v3-le-f4-c.npy", table.astype("<f4"), (3, 0))
    valid("v3-be-f8-f.npy", np.asfortranarray(table.astype(">f8")), (3, 0))

    # Hand-written headers that NumPy reads: native ('=' and '|') byte order,
    # and Python 2 long integers in the shape.
    le8 = table.astype("<f8").tobytes(order="C")
    le4 = table.astype("<f4").tobytes(order="C")
    shape = "(%d, %d, %d)" % table.shape
    for name, descr, header, payload in (
        ("crafted-native-eq-f8.npy", "=f8", "{'descr': '=f8', 'fortran_order': False, 'shape': %s, }" % shape, le8),
        ("crafted-native-pipe-f4.npy", "|f4", "{'descr': '|f4', 'fortran_order': False, 'shape': %s, }" % shape, le4),
        ("crafted-py2-long-shape.npy", "<f8", "{'descr': '<f8', 'fortran_order': False, 'shape': (%dL, %dL, %dL), }" % table.shape, le8),
        ("crafted-double-quotes.npy", "<f4", '{"shape": %s, "fortran_order": False, "descr": "<f4"}' % shape, le4),
    ):
        write(name, crafted(header, payload))
        assert np.array_equal(np.load(os.path.join(OUT, name)).astype(np.float64), table), name
        files.append({"file": name, "version": "1.0", "descr": descr,
                      "fortranOrder": False, "note": "hand-written header"})

    # float16: its own expected values (the table rounded to half precision).
    half = table.astype("<f2")
    write("v1-le-f2-c.npy", npy_bytes(half, (1, 0)))

    # Files that must be rejected, each with one problem.
    small = prune_table(1, 2, seed=7)
    plain_small = npy_bytes(small.astype("<f8"), (1, 0))
    write("bad-truncated.npy", plain_small[:128 + 100])
    write("bad-magic.npy", b"\x93NUMPX" + plain_small[6:])
    write("bad-int32.npy", npy_bytes(np.arange(99 * 2, dtype="<i4").reshape(99, 1, 2), (1, 0)))
    write("bad-bytes-s4.npy", npy_bytes(np.array([[[b"ab", b"cd"]]], dtype="|S4"), (1, 0)))
    write("bad-object.npy", npy_bytes(np.array([[[1.0, "x"]]], dtype=object), (1, 0)))
    write("bad-shape-2d.npy", npy_bytes(small.reshape(99, 2), (1, 0)))
    write("bad-shape-4d.npy", npy_bytes(small.reshape(99, 1, 2, 1), (1, 0)))
    nan = small.copy()
    nan[5, 0, 1] = np.nan
    write("bad-nan.npy", npy_bytes(nan, (1, 0)))
    above = small.copy()
    above[98, 0, 1] = 1.5
    write("bad-ratio-above-1.npy", npy_bytes(above, (1, 0)))
    below = small.copy()
    below[3, 0, 0] = -0.25
    write("bad-ratio-negative.npy", npy_bytes(below, (1, 0)))

    expected = {
        "shape": list(table.shape),
        "values": table.reshape(-1).tolist(),
        "valuesF2": half.astype(np.float64).reshape(-1).tolist(),
        "files": files,
        "numpy": np.__version__,
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
