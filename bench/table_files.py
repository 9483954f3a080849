"""The files of the tables benchmark (bench.tables), made and read in a process of their
own so that pyarrow and a million ids never swell the benchmark's own process (a child
inherits its size in ``ru_maxrss`` at fork).

    python -m bench.table_files write FOLDER N        rows-N.jsonl, .csv and .parquet: the same rows
    python -m bench.table_files compare A B           same ids, lines, fingerprints, answers?
    python -m bench.table_files check-export TABLE    rows, unique ids, columns and their types
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import orjson

COLUMNS = ("id", "text", "topic")
GROUP = 50_000


def _row(i: int) -> dict[str, str]:
    return {"id": f"r-{i}", "text": f"Write one word about item number {i}.", "topic": "items, and things"}


def write(folder: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with (folder / f"rows-{n}.jsonl").open("wb", buffering=1 << 20) as f:
        for i in range(n):
            f.write(orjson.dumps(_row(i)) + b"\n")
    with (folder / f"rows-{n}.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(_row(i) for i in range(n))
    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    with pq.ParquetWriter(folder / f"rows-{n}.parquet", schema) as writer:
        for start in range(0, n, GROUP):
            rows = [_row(i) for i in range(start, min(n, start + GROUP))]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def _answers(path: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    with path.open("rb") as f:
        for raw in f:
            rec = orjson.loads(raw)
            meta = rec["llmbatch"]
            body = (rec.get("response") or {}).get("body") or {}
            content = (body.get("choices") or [{}])[0].get("message", {}).get("content")
            out[rec["custom_id"]] = (meta["line"], meta["fp"], meta["state"], content)
    return out


def compare(a: Path, b: Path) -> dict[str, Any]:
    left, right = _answers(a), _answers(b)
    differ = sum(1 for k, v in left.items() if right.get(k) != v) + len(set(right) - set(left))
    return {"ids": len(left), "other_ids": len(right), "differ": differ, "same": differ == 0}


def check_export(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    ids: set[str] = set()
    for batch in f.iter_batches(columns=["llm_custom_id"], batch_size=100_000):
        ids.update(batch.column(0).to_pylist())
    schema = f.schema_arrow
    return {
        "rows": f.metadata.num_rows,
        "unique_ids": len(ids),
        "row_groups": f.metadata.num_row_groups,
        "types": {name: str(schema.field(name).type) for name in schema.names},
    }


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "write":
        write(Path(args[0]), int(args[1]))
        return
    result = compare(Path(args[0]), Path(args[1])) if command == "compare" else check_export(Path(args[0]))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
