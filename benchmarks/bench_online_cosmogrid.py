"""Cost of the ``cosmogrid`` loader's split check: first load (hashes every validation and test row)
against a load that finds the digests in its cache.

    python benchmarks/bench_online_cosmogrid.py [--rows 10000] [--subset 2000] [--dir DIR]

The real shards cannot be downloaded here, so the script writes synthetic ones with the real
schema and sizes (``input``: list<list<list<float32>>> holding a (1, 66, 66) map, ``label``:
list<float64>; validation and test 10,000 rows each, as on the Hub; train 2 × ``--rows``; row
groups of 1,000 rows) into ``--dir`` (default: a temporary folder), then times
``CosmoGridTask.load_data`` twice with ``--subset`` rows per split.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _list_column(maps: np.ndarray):
    """(n, 1, 66, 66) float32 -> a pyarrow list<list<list<float32>>> column, without Python lists."""
    import pyarrow as pa

    n, _, h, w = maps.shape
    inner = pa.ListArray.from_arrays(np.arange(0, maps.size + 1, w, dtype=np.int32), pa.array(maps.ravel()))
    middle = pa.ListArray.from_arrays(np.arange(0, n * h + 1, h, dtype=np.int32), inner)
    return pa.ListArray.from_arrays(np.arange(0, n + 1, dtype=np.int32), middle)


def write_shards(root: Path, rows: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, n, suffix in (("train", 2 * rows, "cbc941e131c986c4"), ("validation", rows, "1e5f73b2061cc598"),
                             ("test", rows, "1e5f73b2061cc598")):
        maps = rng.normal(0, 0.01, (n, 1, 66, 66)).astype(np.float32)
        labels = rng.uniform(0.1, 1.0, (n, 2))
        table = pa.table({"input": _list_column(maps), "label": pa.ListArray.from_arrays(
            np.arange(0, 2 * n + 1, 2, dtype=np.int32), pa.array(labels.ravel()))})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001-{suffix}.parquet", row_group_size=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows of validation and test (train: twice)")
    parser.add_argument("--subset", type=int, default=2_000, help="rows loaded per split")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the shards (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sumofparts.tasks import online_cosmogrid as oc

    with tempfile.TemporaryDirectory(prefix="bench-cosmogrid-") as tmp:
        root = args.dir or Path(tmp)
        if not (root / "data").is_dir():
            t0 = time.perf_counter()
            write_shards(root, args.rows)
            print(f"wrote synthetic shards in {time.perf_counter() - t0:.1f} s")
        oc.SIZES["bench"] = {"train": args.subset, "val": args.subset, "test": args.subset}
        task = oc.CosmoGridTask(data_dir=root, download=False)
        cache = Path(tmp) / "cache"
        print("| load | seconds | validation/test rows hashed |")
        print("|---|---|---|")
        for _ in range(2):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", oc.SplitOverlapWarning)
                data = task.load_data(cache, size="bench", progress=False)
            check = data.meta["split_overlap"]["validation_shard_vs_test_shard"]
            label = "first (hashes)" if check["hashed_now"] else "cached digests"
            hashed = check["validation_rows"] + check["test_rows"] if check["hashed_now"] else 0
            print(f"| {label} | {time.perf_counter() - t0:.1f} | {hashed} |")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"peak resident memory: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
