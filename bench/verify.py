"""Check an output file: one line per item, no id twice, and how many were answered.

Runs as its own process (``python -m bench.verify OUT``) so that a million ids held
in a set never swell the benchmark's own process, whose size a child inherits in its
``ru_maxrss`` at fork.
"""

from __future__ import annotations

import sys

import orjson


def check(path: str) -> dict[str, int]:
    ids: set[str] = set()
    lines = answered = 0
    with open(path, "rb") as f:
        for raw in f:
            lines += 1
            rec = orjson.loads(raw)
            ids.add(rec.get("custom_id"))
            response = rec.get("response") or {}
            if rec.get("error") is None and response.get("status_code") == 200:
                answered += 1
    return {"lines": lines, "unique": len(ids), "answered": answered}


if __name__ == "__main__":
    sys.stdout.write(orjson.dumps(check(sys.argv[1])).decode() + "\n")
