"""The command line of the fake server: ``python -m llmbatch.testing.server``.

Its flags are the constructor arguments of :class:`~llmbatch.testing.server.FakeServer`
a process of its own needs (the benchmarks run the server on a core of its own this
way); it serves until interrupted, on the event loop ``--loop`` chooses, with its
garbage collector tuned for a process that does nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc

from llmbatch.testing import server as fake_server
from llmbatch.testing.buckets import RESET_MEANINGS
from llmbatch.testing.promptcache import PromptCache
from llmbatch.testing.quality import parse_quality
from llmbatch.testing.server import LOOP_KINDS, FakeServer, new_event_loop

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(fake_server.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute (429 past it)")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute (429 past it)")
    parser.add_argument(
        "--bucket-seconds",
        type=float,
        default=1.0,
        help="how many seconds of the rate the limits' buckets hold (60: a minute's worth)",
    )
    parser.add_argument(
        "--enforce-seconds",
        type=float,
        default=None,
        help="also enforce the limits over this shorter window, unannounced (1: a minute's limit per second)",
    )
    parser.add_argument(
        "--key-rpm",
        type=float,
        default=None,
        help="a LiteLLM-style key limit: requests per fixed window, x-ratelimit-api_key-* headers",
    )
    parser.add_argument("--key-window", type=float, default=60.0, help="the key limit's fixed window (s)")
    parser.add_argument(
        "--start-spent", action="store_true", help="the buckets start empty, as if the key was just used"
    )
    parser.add_argument(
        "--reset-means",
        choices=RESET_MEANINGS,
        default="next",
        help="x-ratelimit-reset-*: time until one more unit (next) or until the bucket is full (full)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--flex-capacity-429",
        type=float,
        default=0.0,
        help="share of service_tier flex requests refused with a capacity 429 (resource unavailable)",
    )
    parser.add_argument("--no-retry-after", action="store_true")
    parser.add_argument("--no-limit-headers", action="store_true", help="send no x-ratelimit-* headers")
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--loop", choices=LOOP_KINDS, default="auto", help="event loop (auto: uvloop when installed)"
    )
    parser.add_argument(
        "--quality",
        action="append",
        default=[],
        metavar="MODEL=SHARE",
        help="a share of MODEL's answers spoiled (not valid JSON); repeatable",
    )
    parser.add_argument(
        "--prompt-cache",
        action="store_true",
        help="report cached_tokens for prompt prefixes sent before (routed by prompt_cache_key)",
    )
    batch = parser.add_argument_group("Batch API")
    batch.add_argument(
        "--batch-start-delay", type=float, default=0.0, help="seconds a batch stays validating"
    )
    batch.add_argument(
        "--batch-lines-per-second",
        type=float,
        default=None,
        help="the pace of a running batch (default: unpaced)",
    )
    batch.add_argument(
        "--batch-min-seconds", type=float, default=0.0, help="a batch stays in progress at least this long"
    )
    batch.add_argument("--batch-expire-after", type=int, default=None, help="a batch expires after N lines")
    batch.add_argument(
        "--enqueued-token-limit",
        type=int,
        default=None,
        help="input tokens of a model's batches enqueued at once",
    )
    batch.add_argument(
        "--lose-create-answers",
        type=int,
        default=0,
        help="the first K creates drop the connection unanswered",
    )
    args = parser.parse_args(argv)
    server = FakeServer(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        rpm=args.rpm,
        tpm=args.tpm,
        bucket_seconds=args.bucket_seconds,
        enforce_seconds=args.enforce_seconds,
        key_rpm=args.key_rpm,
        key_window=args.key_window,
        start_spent=args.start_spent,
        reset_means=args.reset_means,
        fault_rate=args.fault_rate,
        flex_capacity_429=args.flex_capacity_429,
        retry_after=not args.no_retry_after,
        limit_headers=not args.no_limit_headers,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        batch_start_delay=args.batch_start_delay,
        batch_lines_per_second=args.batch_lines_per_second,
        batch_min_seconds=args.batch_min_seconds,
        batch_expire_after=args.batch_expire_after,
        enqueued_token_limit=args.enqueued_token_limit,
        lose_create_answers=args.lose_create_answers,
        quality=parse_quality(args.quality),
        prompt_cache=PromptCache() if args.prompt_cache else None,
    )

    async def run() -> None:
        await server.serve()
        # A process of its own may tune its collector: aiohttp allocates a few hundred
        # objects per request, nearly all freed by reference counting, and collecting
        # every 700 allocations (over all that was imported, too) cost this server
        # about 15% of its CPU under load (median of 8 alternated runs).
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        print(f"listening on {server.base_url}", flush=True)
        await asyncio.Event().wait()

    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=lambda: new_event_loop(args.loop)) as runner,
    ):
        runner.run(run())
