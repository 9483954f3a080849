"""The floor llmbatch is measured against: the same job with nothing but aiohttp and orjson.

Reads Batch API lines, posts each body over one keep-alive session with CONCURRENCY
requests in flight, parses each answer and writes one output line per item. No
retries, pacing or validation: what a hand-written loop would do on a good day.

    python -m bench.bare_client IN OUT --url http://127.0.0.1:8900/v1/chat/completions

Prints ``{"elapsed_s": ..., "done": ...}`` on stdout (interpreter start-up excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator

import aiohttp
import orjson


def _items(path: str) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as f:
        for raw in f:
            line = orjson.loads(raw)
            yield line["custom_id"], orjson.dumps(line["body"])


async def _run(args: argparse.Namespace) -> int:
    headers = {
        "Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'sk-bench')}",
        "Content-Type": "application/json",
    }
    items = _items(args.input)
    done = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    with open(args.output, "wb") as out:
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def worker() -> None:
                nonlocal done
                for custom_id, body in items:
                    async with session.post(args.url, data=body) as resp:
                        raw = await resp.read()
                        status = resp.status
                    record = {
                        "custom_id": custom_id,
                        "response": {"status_code": status, "body": orjson.loads(raw)},
                        "error": None,
                    }
                    out.write(orjson.dumps(record) + b"\n")
                    done += 1

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp client (benchmark floor)")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--url", required=True, help="full URL of the chat completions endpoint")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    started = time.monotonic()
    done = asyncio.run(_run(args))
    elapsed = time.monotonic() - started
    sys.stdout.write(orjson.dumps({"elapsed_s": round(elapsed, 3), "done": done}).decode() + "\n")


if __name__ == "__main__":
    main()
