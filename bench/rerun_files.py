"""Write a rerun's starting point: N Batch API input lines, and the output a finished
run would have left, with `failed` of its items written failed (transient), spread
through the file. Run as a script so the benchmark process stays small:

    python bench/rerun_files.py IN OUT N FAILED
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from bench.harness import write_input
from llmbatch.core.errors import TransientError
from llmbatch.core.values import Completion, Finished, State
from llmbatch.files.jsonl import parse_line
from llmbatch.input.build import RequestBuilder
from llmbatch.output.records import batch_record, server_hash


def main() -> None:
    inp, out, n, failed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    write_input(inp, n)
    server = server_hash(sys.argv[5]) if len(sys.argv) > 5 else ""
    every = max(1, n // max(failed, 1))
    builder = RequestBuilder()
    with inp.open("rb") as src, out.open("wb", buffering=1 << 20) as dst:
        for number, raw in enumerate(src, 1):
            req = builder.build(number, parse_line(number, raw.rstrip(b"\n")))
            message = {"role": "assistant", "content": f"word {number}"}
            body = {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
            }
            answer = Completion(body=body, request_id=f"req_{number}")
            if failed and number % every == 0 and number // every <= failed:
                error = TransientError("HTTP 503: overloaded", code="http_503")
                done = Finished(request=req, state=State.FAILED, retries=10, error=error)
            else:
                done = Finished(request=req, state=State.VALID, requests=1, last=answer)
            dst.write(orjson.dumps(batch_record(done, server), option=orjson.OPT_APPEND_NEWLINE))


if __name__ == "__main__":
    main()
