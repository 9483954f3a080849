"""Outputs written before the Responses API, completions and moderations came (by main
at a0ecd27: tests/data/main_outputs/make.sh) are not stale today: a rerun with the same
command finds every answer done and sends nothing. So is a rerun of a Responses run
whose items were re-asked (the re-ask keeps its first request's fingerprint)."""

from __future__ import annotations

import shutil
from typing import Any

import orjson
import pytest
from conftest import ROOT, by_id, write_jsonl

from llmbatch.input.build import fingerprint
from llmbatch.output.records import fp_hex

pytestmark = pytest.mark.usefixtures("no_backoff")

MADE_BY_MAIN = ROOT / "tests" / "data" / "main_outputs"
# Each command of make.sh, without `--provider fake -q --fresh`.
COMMANDS = {
    "chat_template": ("items.jsonl", "--prompt", "Review: {text}", "--id-field", "id", "--system",
                      "Be terse.", "--max-tokens", "40", "--schema", "review.schema.json", "--param",
                      "temperature=0", "--merged"),
    "embeddings_template": ("items.jsonl", "--prompt", "{text}", "--id-field", "id", "--endpoint",
                            "/v1/embeddings"),
    "bodies": ("bodies.jsonl", "--schema", "review.schema.json"),
    "chat_bodies": ("chat_bodies.jsonl", "--max-tokens", "30"),
    "batch_lines": ("batch_lines.jsonl", "--max-tokens", "20"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_output_written_before_the_new_endpoints_is_not_stale(run_cli, tmp_path, name):
    """The same command over main's output: exit 0, every item skipped as done, nothing
    sent, the output as it was."""
    folder = tmp_path / "data"
    shutil.copytree(MADE_BY_MAIN, folder)
    src, *flags = COMMANDS[name]
    args = [folder / a if a.endswith((".jsonl", ".json")) else a for a in (src, *flags)]
    out = folder / f"{name}.out.jsonl"
    before = out.read_bytes()
    summary = tmp_path / "summary.json"
    result = run_cli("run", *args, "-o", out, "--provider", "fake", "-q", "--summary-json", summary)
    assert result.exit_code == 0, result.output
    figures = orjson.loads(summary.read_bytes())
    assert figures["requests"] == 0 and figures["done"] == 0, figures
    assert figures["skipped"] == len(before.splitlines())
    assert figures["kept"] == {}, figures
    assert out.read_bytes() == before


def test_a_rerun_of_a_reasked_responses_run_sends_nothing(run_cli, fake_server, tmp_path, api_key):
    """Responses items, one in three re-asked (so sent with a longer input): a rerun
    with the same command finds all of them done."""
    server = fake_server()
    rows = [{"id": f"r{i}", "text": f"Item {i} in JSON" + ("\n@fake {\"bad\": 1}" if i % 3 == 0 else "")}
            for i in range(9)]  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    command = ("run", src, "-o", out, "--base-url", server.base_url, "-m", "m", "--endpoint", "/v1/responses",
               "--prompt", "{text}", "--id-field", "id", "--validate", "json")  # fmt: skip
    first = run_cli(*command)
    assert first.exit_code == 0, first.output
    assert sum(r["llmbatch"]["requests"] for r in by_id(out).values()) == 12
    sent = server.stats.requests
    again = run_cli(*command)
    assert again.exit_code == 0, again.output
    assert server.stats.requests == sent  # nothing sent
    assert "skipped (already done): 9" in again.stderr


def _lines_with(cache_key: str, prompt: str = "Say {i}") -> list[dict[str, object]]:
    return [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": prompt.format(i=i)}],
                  "prompt_cache_key": cache_key, "store": False, "metadata": {"job": "nightly"}}}
        for i in range(5)
    ]  # fmt: skip


def test_keys_that_say_how_a_request_is_served_are_not_what_is_asked(run_cli, tmp_path):
    """prompt_cache_key, store and metadata are left out of the fingerprint: a rerun
    with another cache key sends nothing; a line written when they were still hashed
    (its older fingerprint) is not stale either; a changed prompt still is."""
    src = write_jsonl(tmp_path / "in.jsonl", _lines_with("k1"))
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"

    def rerun() -> Any:
        summary.unlink(missing_ok=True)
        result = run_cli("run", src, "-o", out, "--provider", "fake", "-q", "--summary-json", summary)
        assert result.exit_code == 0, result.output
        return orjson.loads(summary.read_bytes())

    assert rerun()["requests"] == 5
    write_jsonl(src, _lines_with("k2"))
    assert rerun()["requests"] == 0  # another cache key: the same request

    # Lines as an older llmbatch wrote them: the fingerprint held every body key.
    older = []
    for record in (orjson.loads(line) for line in out.read_bytes().splitlines()):
        body = next(x["body"] for x in _lines_with("k2") if x["custom_id"] == record["custom_id"])
        record["llmbatch"]["fp"] = fp_hex(
            fingerprint("/v1/chat/completions", body, frozenset({"service_tier"}))
        )
        older.append(record)
    write_jsonl(out, older)
    assert rerun()["requests"] == 0

    write_jsonl(src, _lines_with("k2", prompt="Tell {i}"))
    result = run_cli("run", src, "-o", out, "--provider", "fake", "-q")
    assert result.exit_code == 2 and "different request" in result.stderr, result.output
