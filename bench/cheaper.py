"""Issue 26's other two benchmarks against the loopback server (``--deadline`` is
`bench.deadline`'s):

- ``escalate``: 1,000 data items asking for JSON, a first model whose answers are
  invalid 30% of the time and a second at 2%, ``--max-requests 2 --escalate``: every
  item that fails on the first is answered by the second, and each model's cost in the
  summary matches the server's usage of that model at its price.
- ``promptcache``: 2,000 items of a template whose fixed part is 1,500 tokens, against
  the server's prompt cache: cached tokens at least 90% of the prefix tokens after the
  first request, and the cost within 5% of the server's usage at cached prices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from bench.harness import Server
from llmbatch.cost.prices import cost, price_for

if TYPE_CHECKING:
    from pathlib import Path

    from bench.scenarios import Context, Row

__all__ = ["escalate", "prompt_cache"]

ESCALATE_N = 1_000
PRICES = {"cheap": (1.0, 2.0), "strong": (10.0, 20.0)}  # USD per million in / out
CACHE_N = 2_000
PREFIX_TOKENS = 1_500
CACHE_MODEL = "gpt-4o-mini"  # priced with its cached-input rate


def _items(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": f"r{i}", "text": f"item number {i}"}) + b"\n")
    return path


def escalate(ctx: Context) -> list[Row]:
    inp = _items(ctx.tmp / "escalate.jsonl", ESCALATE_N)
    config = ctx.tmp / "escalate.toml"
    config.write_text("".join(f"[prices.{m}]\ninput = {i}\noutput = {o}\n" for m, (i, o) in PRICES.items()))
    args = (
        "-m", "cheap", "--escalate", "strong", "--max-requests", "2", "--prompt", "Answer in json: {text}",
        "--id-field", "id", "--validate", "json", "--config", str(config),
    )  # fmt: skip
    ctx.log(f"escalate: {ESCALATE_N:,} items, cheap 30% invalid, strong 2%")
    with Server(extra=("--quality", "cheap=0.3", "--quality", "strong=0.02")) as server:
        run = ctx.run("llmbatch", inp, ESCALATE_N, server=server, args=args, timeout=300)
    row = run.row("--escalate", "llmbatch -m cheap --escalate strong, 30% / 2% invalid")
    info, by_model = run.info, run.server.get("by_model", {})
    models: dict[str, Any] = info.get("models", {})
    matches = []
    for model, (price_in, price_out) in PRICES.items():
        used = by_model.get(model, {})
        server_usd = (
            used.get("prompt_tokens", 0) * price_in + used.get("completion_tokens", 0) * price_out
        ) / 1e6
        ours = (models.get(model) or {}).get("cost_usd") or 0.0
        matches.append(abs(ours - server_usd) <= 1e-9 + 1e-6 * server_usd)
    strong = (models.get("strong") or {}).get("items", 0)
    parts = []
    for m in PRICES:
        spent = (models.get(m) or {}).get("cost_usd") or 0.0
        parts.append(f"{m} ${spent:.5f} (server: {by_model.get(m, {}).get('answers', 0):,} answers)")
    row.result = (
        f"valid {info.get('valid', 0):,} of {ESCALATE_N:,}; escalated {info.get('escalated', 0):,}, "
        f"answered by strong {strong:,}; " + "; ".join(parts)
    )
    row.target = "every item valid (the failed ones by the second model), cost per model = the server's"
    row.met = run.ok and info.get("valid") == ESCALATE_N and strong == info.get("escalated") and all(matches)
    return [row]


def prompt_cache(ctx: Context) -> list[Row]:
    inp = _items(ctx.tmp / "cache.jsonl", CACHE_N)
    template = ctx.tmp / "cache-template.txt"
    fixed = ("Read the guide below, then classify the review.\n" + "guide line. " * 496)[: PREFIX_TOKENS * 4]
    template.write_text(fixed + "\nReview: {text}")
    args = ("-m", CACHE_MODEL, "--template", str(template), "--id-field", "id", "--prompt-cache-key", "auto")
    ctx.log(f"prompt cache: {CACHE_N:,} items, a {PREFIX_TOKENS:,}-token fixed prefix")
    with Server(extra=("--prompt-cache",)) as server:
        run = ctx.run("llmbatch", inp, CACHE_N, server=server, args=args, timeout=300)
    row = run.row(
        "prompt cache", f"llmbatch --template (a {PREFIX_TOKENS:,}-token prefix) --prompt-cache-key auto"
    )
    info = run.info
    used = run.server.get("by_model", {}).get(CACHE_MODEL, {})
    server_usd = cost(
        price_for(CACHE_MODEL), used.get("prompt_tokens", 0), used.get("completion_tokens", 0),
        used.get("cached_tokens", 0),
    ) or 0.0  # fmt: skip
    share = info.get("cached_tokens", 0) / (PREFIX_TOKENS * (CACHE_N - 1))
    spent = info.get("cost_usd") or 0.0
    off = abs(spent - server_usd) / server_usd if server_usd else 1.0
    row.result = (
        f"cached {share:.1%} of the prefix tokens after the first request; cost ${spent:.4f} vs the "
        f"server's ${server_usd:.4f} ({off:.2%} apart); saved ${info.get('cache_saved_usd') or 0:.4f}"
    )
    row.target = "cached ≥ 90% of the prefix tokens, cost within 5% of the server's"
    row.met = run.ok and share >= 0.9 and off <= 0.05
    return [row]
