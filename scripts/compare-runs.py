#!/usr/bin/env python3
"""Compares the outputs of two `ftirflow run` directories: every Parquet table (predictions/*,
cores, gradcam, bands, rejects) by content and key-value metadata, and every parts/*.json.
Exits 1 and names the first difference; prints a summary when all are identical.

    scripts/compare-runs.py BEFORE_RUN_DIR AFTER_RUN_DIR
"""
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def same(x: pa.Table, y: pa.Table) -> bool:
    """Bit for bit (NaN equals NaN): the tables serialized as one Arrow IPC stream each."""
    def ipc(t: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t.combine_chunks())
        return sink.getvalue().to_pybytes()
    return x.schema == y.schema and ipc(x) == ipc(y)


def tables(root: Path):
    return sorted(p.relative_to(root) for p in root.rglob("*.parquet") if "report" not in p.parts)


def main(a: Path, b: Path) -> int:
    ta, tb = tables(a), tables(b)
    if ta != tb:
        print(f"different files: {sorted(set(ta) ^ set(tb))}")
        return 1
    rows = 0
    for rel in ta:
        x, y = pq.read_table(a / rel), pq.read_table(b / rel)
        if not same(x, y):
            print(f"{rel}: contents differ")
            return 1
        if x.schema.metadata != y.schema.metadata:
            print(f"{rel}: key-value metadata differs")
            return 1
        rows += x.num_rows
    parts = sorted(p.relative_to(a) for p in (a / "parts").glob("*.json"))
    for rel in parts:
        if json.loads((a / rel).read_text()) != json.loads((b / rel).read_text()):
            print(f"{rel}: differs")
            return 1
    print(f"identical: {len(ta)} Parquet files ({rows} rows) and {len(parts)} summary parts")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
