"""The same job with the openai SDK used the usual way, for the record.

``AsyncOpenAI(max_retries=0)`` and ``client.chat.completions.create(**body)`` from
CONCURRENCY tasks, each answer's pydantic model dumped into one output line.

    python -m bench.sdk_usual_client IN OUT --base-url http://127.0.0.1:8900/v1

Prints ``{"elapsed_s": ..., "done": ...}`` on stdout (interpreter start-up excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson


def _items(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        for raw in f:
            line = orjson.loads(raw)
            yield line["custom_id"], line["body"]


async def _run(args: argparse.Namespace) -> int:
    items = _items(args.input)
    done = 0
    async with openai.AsyncOpenAI(base_url=args.base_url, max_retries=0) as client:
        with open(args.output, "wb") as out:

            async def worker() -> None:
                nonlocal done
                for custom_id, body in items:
                    completion = await client.chat.completions.create(**body)
                    record = {
                        "custom_id": custom_id,
                        "response": {"status_code": 200, "body": completion.model_dump()},
                        "error": None,
                    }
                    out.write(orjson.dumps(record) + b"\n")
                    done += 1

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description="openai SDK used the usual way")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    started = time.monotonic()
    done = asyncio.run(_run(args))
    elapsed = time.monotonic() - started
    sys.stdout.write(orjson.dumps({"elapsed_s": round(elapsed, 3), "done": done}).decode() + "\n")


if __name__ == "__main__":
    main()
