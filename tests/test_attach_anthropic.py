"""Attachments to Anthropic (--provider anthropic --attach): rows naming images and PDFs,
a few missing, one over Anthropic's 5 MB an image (counted as base64), one not an
image, through the CLI against the fake Anthropic server, which checks each image and
document block as Anthropic does: the good rows send the right blocks, the bad ones are
rejects naming the file, the Message Batches mode keeps each batch under --batch-bytes
with the attachments counted, and the estimate counts an image by Anthropic's rule."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, read_jsonl, write_jsonl
from test_attach import estimated_prompt_tokens, gif, jpeg, pdf, png, webp

from llmbatch.core.attachments import messages_image_tokens
from llmbatch.core.endpoints import MESSAGES
from llmbatch.input.attach import MB
from llmbatch.testing.anthropic import AnthropicServer

pytestmark = pytest.mark.usefixtures("no_backoff")

KEY = "sk-ant-test-attach"
IMAGES = {
    "png": ("image/png", lambda i: png(40, 30, seed=i)),
    "jpg": ("image/jpeg", lambda i: jpeg(1000 + i, 600)),
    "gif": ("image/gif", lambda i: gif(64, 64)),
    "webp": ("image/webp", lambda i: webp(2048, 4096)),
}
MISSING, TOO_BIG, NOT_AN_IMAGE = (5, 17, 26), 11, 21


@pytest.fixture
def anthropic() -> Iterator[Callable[..., AnthropicServer]]:
    servers: list[AnthropicServer] = []

    def start(**kwargs: Any) -> AnthropicServer:
        server = AnthropicServer(api_key=KEY, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def claude(run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    return run_cli


def scans(tmp_path: Path, n: int = 40) -> tuple[Path, dict[str, Any]]:
    """n rows, an image each (every kind), every third with one or two PDFs; rows
    `MISSING` name files that are not there, `TOO_BIG` a 4 MB PNG (5.3 MB as base64),
    `NOT_AN_IMAGE` a text file named .png, the last row an image and a PDF by URL.
    Returns the input and, per id, the blocks' (media type, bytes) or the file its
    reject names."""
    folder = tmp_path / "data" / "scans"
    folder.mkdir(parents=True)
    rows, expect = [], {}
    kinds = list(IMAGES)
    for i in range(n - 1):
        kind = kinds[i % len(kinds)]
        media_type, make = IMAGES[kind]
        name, path = f"scans/{i:02}.{kind}", folder / f"{i:02}.{kind}"
        row: dict[str, Any] = {"id": f"s{i}", "text": f"What is in scan {i}?", "image": name, "pages": None}
        expect[row["id"]] = name
        if i == TOO_BIG:
            with path.open("wb") as f:
                f.write(png(8, 8))
                f.truncate(4 * MB)  # under OpenAI's 20 MB, over Anthropic's 5 MB as base64
        elif i == NOT_AN_IMAGE:
            path.write_text("a shopping list, not a picture\n")
        elif i not in MISSING:
            data = make(i)
            path.write_bytes(data)
            expect[row["id"]] = [(media_type, data)]
        if i % 3 == 0:
            row["pages"] = []
            for k in range(1 + i % 2):
                doc = folder / f"{i:02}-{k}.pdf"
                doc.write_bytes(pdf(k + 1))
                row["pages"].append(f"scans/{doc.name}")
                if isinstance(expect[row["id"]], list):
                    expect[row["id"]].append(("application/pdf", doc.read_bytes()))
        rows.append(row)
    urls = ["https://example.com/cat.jpg", "https://example.com/x.pdf"]
    rows.append({"id": f"s{n - 1}", "text": f"What is in scan {n - 1}?", "image": urls[0], "pages": urls[1:]})
    expect[f"s{n - 1}"] = [("url", b"https://example.com/cat.jpg"), ("url", b"https://example.com/x.pdf")]
    return write_jsonl(tmp_path / "data" / "rows.jsonl", rows), expect


def blocks(body: dict[str, Any]) -> tuple[str, list[tuple[str, bytes]]]:
    """The user turn's text and its blocks as (media type, bytes), (url, URL) for a url
    source; the blocks come before the text, an image's before the documents."""
    (message,) = body["messages"]
    *attached, text = message["content"]
    assert text["type"] == "text"
    out, kinds = [], []
    for block in attached:
        source = block["source"]
        kinds.append(block["type"])
        if source["type"] == "url":
            out.append(("url", source["url"].encode()))
        else:
            assert source["type"] == "base64", block
            out.append((source["media_type"], base64.b64decode(source["data"], validate=True)))
    assert kinds == ["image"] + ["document"] * (len(kinds) - 1), kinds
    return text["text"], out


def assert_rejects(out: Path, expect: dict[str, Any]) -> set[str]:
    rejects = {r["line"]: r["error"] for r in read_jsonl(out.with_name(out.name + ".rejects.jsonl"))}
    bad = {int(cid[1:]) + 1: name for cid, name in expect.items() if isinstance(name, str)}
    assert set(rejects) == set(bad)
    for line, name in bad.items():
        assert name in rejects[line], rejects[line]
    assert "file not found" in rejects[MISSING[0] + 1]
    big = rejects[TOO_BIG + 1]
    assert "4.0 MB (5.3 MB as base64), more than the 5 MB Anthropic takes for an image" in big, big
    assert "unknown type" in rejects[NOT_AN_IMAGE + 1]
    return {f"s{line - 1}" for line in bad}


def run_args(server: AnthropicServer, src: Path, out: Path, *more: object) -> list[object]:
    return [
        "run", src, "-o", out, "--provider", "anthropic", "--base-url", server.base_url,
        "-m", "claude-haiku-4-5", "--prompt", "{text}", "--id-field", "id",
        "--attach", "image", "--attach", "pages", "--quiet", *more,
    ]  # fmt: skip


def test_live_rows_send_image_and_document_blocks(anthropic, claude, tmp_path):
    """Live: each good row sends an image block and a document block per PDF, base64
    with the media type its content tells (a URL as a url source), then its text; the
    server refuses none. The missing, over-5-MB and not-an-image rows are rejects naming
    their file; every other row is written valid, once."""
    src, expect = scans(tmp_path)
    server = anthropic()
    out = tmp_path / "out.jsonl"
    result = claude(*run_args(server, src, out))
    assert result.exit_code == 1, result.output  # the rejects
    bad = assert_rejects(out, expect)
    records = by_id(out)
    assert set(records) == set(expect) - bad
    assert all(r["llmbatch"]["valid"] for r in records.values())
    assert server.stats.bad_blocks == [] and len(server.stats.bodies) == len(records)
    for body in server.stats.bodies:
        text, sent = blocks(body)
        assert sent == expect["s" + text.split()[-1].rstrip("?")], text
    # The server bills an image as Anthropic does: a 2048 x 4096 WebP is 1,600 tokens.
    assert 1600 < records["s7"]["llmbatch"]["usage"]["prompt_tokens"] < 1700
    assert KEY not in out.read_text() + result.output


def test_the_server_refuses_a_block_whose_media_type_is_wrong(anthropic, claude, tmp_path):
    """A request body naming image/jpeg over PNG bytes (or with broken base64) gets
    Anthropic's 400: the item fails with the server's message, the good one is answered."""
    data = base64.b64encode(png(10, 10)).decode()

    def body(media_type: str, payload: str) -> dict[str, Any]:
        image = {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": payload}}
        content = [image, {"type": "text", "text": "Describe it."}]
        return {"max_tokens": 50, "messages": [{"role": "user", "content": content}]}

    rows = [
        {"custom_id": "good", "url": MESSAGES, "body": body("image/png", data)},
        {"custom_id": "liar", "url": MESSAGES, "body": body("image/jpeg", data)},
        {"custom_id": "broken", "url": MESSAGES, "body": body("image/png", data[:-3] + "!!!")},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    server = anthropic()
    out = tmp_path / "out.jsonl"
    result = claude(
        "run", src, "-o", out, "--provider", "anthropic", "--base-url", server.base_url,
        "-m", "claude-haiku-4-5", "--quiet",
    )  # fmt: skip
    assert result.exit_code != 0, result.output
    records = by_id(out)
    assert records["good"]["llmbatch"]["state"] == "valid"
    for cid in ("liar", "broken"):
        assert records[cid]["llmbatch"]["state"] != "valid"
    assert "image/jpeg media type" in str(records["liar"]["error"])
    assert "invalid base64" in str(records["broken"]["error"])
    assert len(server.stats.bad_blocks) == 2


def test_message_batches_stay_under_batch_bytes_with_attachments(anthropic, claude, tmp_path):
    """--batch-api --batch-bytes 60,000: the attachments are counted, so the rows go in
    several batches, each under the limit; the good rows are answered via batch with
    their blocks checked at the server, and a row bigger than a batch may be is a
    reject saying so."""
    src, expect = scans(tmp_path)
    (tmp_path / "data" / "scans" / "00.png").write_bytes(png(150, 150, seed=1))  # ~90 KB as base64
    server = anthropic(batch_seconds=0.1)
    out = tmp_path / "out.jsonl"
    limit = 60_000
    result = claude(*run_args(server, src, out, "--batch-api", "--batch-bytes", limit, "--poll-every", "0.1"))
    assert result.exit_code == 1, result.output
    rejects = {r["line"]: r["error"] for r in read_jsonl(out.with_name("out.jsonl.rejects.jsonl"))}
    assert "more than a batch file holds (--batch-bytes 60,000)" in rejects[1]
    bad = {f"s{line - 1}" for line in rejects}
    assert bad == {cid for cid, name in expect.items() if isinstance(name, str)} | {"s0"}
    records = by_id(out)
    assert set(records) == set(expect) - bad
    assert all(r["llmbatch"]["valid"] and r["llmbatch"]["via"] == "batch" for r in records.values())
    batches = list(server.batches.values())
    assert len(batches) >= 2
    assert all(len(orjson.dumps({"requests": b.requests})) <= limit for b in batches)
    assert server.stats.bad_blocks == []
    for batch in batches:
        for req in batch.requests:
            _, sent = blocks(req["params"])
            assert sent == expect[req["custom_id"]], req["custom_id"]


def test_the_estimate_counts_an_image_as_anthropic_does(claude, tmp_path):
    """`estimate --provider anthropic`: an image is width x height / 750 tokens after its
    long edge is fitted to 1,568 px (and 1,600 tokens at most), not its base64: a
    2048 x 4096 image is 1,600, a 40 x 30 one 2; a URL counts as 1024 x 1024 (1,399)."""
    assert messages_image_tokens(40, 30) == 2
    assert messages_image_tokens(1000, 600) == 800
    assert messages_image_tokens(2048, 4096) == 1600  # 784 x 1568 is 1,639: capped
    assert messages_image_tokens(0, 0) == 1399
    (tmp_path / "big.webp").write_bytes(webp(2048, 4096))
    (tmp_path / "small.png").write_bytes(png(40, 30))
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"p": "big.webp"}, {"p": "small.png"}, {"p": "https://x.org/a.png"}]
    )
    result = claude(
        "estimate",
        src,
        "--provider",
        "anthropic",
        "-m",
        "claude-haiku-4-5",
        "--prompt",
        "Look.",
        "--attach",
        "p",
    )
    assert result.exit_code == 0, result.output
    tokens = estimated_prompt_tokens(result.output)
    assert 1600 + 2 + 1399 <= tokens < 1600 + 2 + 1399 + 40, result.output
