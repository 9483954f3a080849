"""Files as attachments (--attach): 200 rows naming images and PDFs, a few missing, one
too big, one not an image, through the CLI against the test server: the good rows send
the right content parts (checked at the server, which refuses a wrong one as OpenAI
does), the bad ones are rejects naming the file, Batch API files stay under
--batch-bytes, and the token estimate counts an image by its size."""

from __future__ import annotations

import base64
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, read_jsonl, write_jsonl

from llmbatch.core.attachments import image_size, image_tokens
from llmbatch.input.attach import MB

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A real PNG of noise (so that it does not compress to nothing)."""
    rng = random.Random(seed)
    raw = b"".join(b"\0" + rng.randbytes(3 * width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def jpeg(width: int, height: int) -> bytes:
    """A JPEG's header as far as its size: SOI, a JFIF APP0, a comment, SOF0."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 300) + b"x" * 300
    sof = (
        b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    )
    return b"\xff\xd8" + app0 + comment + sof + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def webp(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def pdf(pages: int = 1) -> bytes:
    body = b"".join(b"%d 0 obj<</Type /Page>>endobj\n" % (i + 3) for i in range(pages))
    return b"%PDF-1.4\n1 0 obj<</Type /Catalog /Pages 2 0 R>>endobj\n" + body + b"trailer<<>>\n%%EOF\n"


IMAGES = {
    "png": ("image/png", lambda i: png(40, 30, seed=i)),
    "jpg": ("image/jpeg", lambda i: jpeg(1000 + i, 600)),
    "gif": ("image/gif", lambda i: gif(64, 64)),
    "webp": ("image/webp", lambda i: webp(2048, 4096)),
}


def estimated_prompt_tokens(output: str) -> int:
    """The prompt tokens `llmbatch estimate` printed (its "~N" figure)."""
    line = next(line for line in output.splitlines() if "prompt tokens" in line)
    return int(line.split("~")[1].split()[0].replace(",", ""))


def folder_of_scans(tmp_path: Path, n: int = 200) -> tuple[Path, dict[str, Any]]:
    """n rows: an image each (every kind, named by its kind's suffix), every third one
    with a list of PDFs too; rows 7, 50, 123, 180 name files that are not there, row 99 an
    image over 20 MB, row 150 a text file named .png. Returns the input and, per id, what
    its row should send ((media type, bytes) per attachment) or the file its reject
    names."""
    scans = tmp_path / "data" / "scans"
    scans.mkdir(parents=True)
    rows, expect = [], {}
    kinds = list(IMAGES)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        media_type, make = IMAGES[kind]
        name = f"scans/{i:03}.{kind}"
        data = make(i)
        row: dict[str, Any] = {"id": f"s{i}", "text": f"What is in scan {i}?", "image": name}
        sent = [(media_type, data)]
        if i in (7, 50, 123, 180):
            expect[row["id"]] = name  # never written: missing
        elif i == 99:
            with (scans / f"{i:03}.{kind}").open("wb") as f:
                f.write(png(8, 8))
                f.truncate(21 * MB)  # sparse: over OpenAI's 20 MB an image
            expect[row["id"]] = name
        elif i == 150:
            (scans / f"{i:03}.{kind}").write_text("a shopping list, not a picture\n")
            expect[row["id"]] = name
        else:
            (scans / f"{i:03}.{kind}").write_bytes(data)
            expect[row["id"]] = sent
        if i % 3 == 0:
            docs = []
            for k in range(1 + i % 2):
                doc = scans / f"{i:03}-{k}.pdf"
                doc.write_bytes(pdf(k + 1))
                docs.append(f"scans/{doc.name}")
                if isinstance(expect[row["id"]], list):
                    expect[row["id"]].append(("application/pdf", doc.read_bytes()))
            row["pages"] = docs
        else:
            row["pages"] = [] if i % 2 else None  # nothing to attach
        rows.append(row)
    return write_jsonl(tmp_path / "data" / "rows.jsonl", rows), expect


def decoded(url: str) -> tuple[str, bytes]:
    head, _, payload = url.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head[:60]
    return head[5:-7], base64.b64decode(payload)


def chat_parts(body: dict[str, Any]) -> tuple[str, list[tuple[str, bytes]]]:
    (message,) = body["messages"]
    text, *parts = message["content"]
    assert text["type"] == "text"
    out = []
    for part in parts:
        if part["type"] == "image_url":
            out.append(decoded(part["image_url"]["url"]))
        else:
            assert part["type"] == "file" and part["file"]["filename"].endswith(".pdf"), part
            out.append(decoded(part["file"]["file_data"]))
    return text["text"], out


def test_200_rows_with_images_and_pdfs_send_the_right_parts(run_cli, fake_server, tmp_path):
    """Live, chat: each good row sends its text, then an image_url part whose data URL
    holds the file's bytes under the media type its content tells, then a file part per
    PDF; the server refuses none. The missing, too big and not-an-image rows are rejects
    naming their file, and every other row is written valid."""
    src, expect = folder_of_scans(tmp_path)
    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "-m", "gpt-4o-mini", "--prompt", "{text}",
        "--id-field", "id", "--attach", "image", "--attach", "pages", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # the rejects
    rejects = {r["line"]: r["error"] for r in read_jsonl(out.with_name("out.jsonl.rejects.jsonl"))}
    bad = {int(cid[1:]) + 1: name for cid, name in expect.items() if isinstance(name, str)}
    assert set(rejects) == set(bad)
    for line, name in bad.items():
        assert name in rejects[line], rejects[line]
    assert "file not found" in rejects[8]
    assert "21.0 MB, more than the 20 MB OpenAI takes for an image" in rejects[100]
    assert "unknown type" in rejects[151]
    records = by_id(out)
    assert len(records) == 200 - len(bad)
    assert all(r["llmbatch"]["valid"] for r in records.values())
    statuses = [b for m, p, h, b in server.received if p.endswith("/chat/completions")]
    assert len(statuses) == len(records)  # one request each: none refused at the server
    for body in statuses:
        text, parts = chat_parts(body)
        cid = "s" + text.split()[-1].rstrip("?")
        assert parts == expect[cid], cid
    # The server bills an image by its size: a 2048 x 4096 WebP is 6 tiles, 1,105 tokens.
    assert records["s3"]["llmbatch"]["usage"]["prompt_tokens"] > 1105


def test_responses_get_input_image_and_input_file_parts(run_cli, fake_server, tmp_path):
    """--endpoint /v1/responses: input becomes one user item of input_text, input_image
    and input_file parts; an http(s) URL is passed on unfetched, a PDF URL as file_url."""
    (tmp_path / "a.gif").write_bytes(gif(10, 10))
    (tmp_path / "b.pdf").write_bytes(pdf())
    urls = ["https://example.com/cat.jpg", "https://example.com/x.pdf"]
    rows = [{"id": "r1", "q": "look", "files": ["a.gif", "b.pdf"]}, {"id": "r2", "q": "look", "files": urls}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    server = fake_server()
    result = run_cli(
        "run", src, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url, "-m", "gpt-4.1-mini",
        "--endpoint", "/v1/responses", "--prompt", "{q}", "--id-field", "id", "--attach", "files", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    inputs = {
        b["input"][0]["content"][1].get("image_url", "")[:5]: b["input"] for _, _, _, b in server.received
    }
    (item,) = inputs["data:"]
    text, image, doc = item["content"]
    assert item["role"] == "user" and text == {"type": "input_text", "text": "look"}
    assert image["type"] == "input_image" and decoded(image["image_url"]) == ("image/gif", gif(10, 10))
    assert (
        doc["type"] == "input_file" and doc["filename"] == "b.pdf" and decoded(doc["file_data"])[1] == pdf()
    )
    (item,) = inputs["https"]
    assert item["content"][1] == {
        "type": "input_image",
        "image_url": "https://example.com/cat.jpg",
        "detail": "auto",
    }
    assert item["content"][2] == {"type": "input_file", "file_url": "https://example.com/x.pdf"}


def test_batch_files_stay_under_batch_bytes_with_attachments(run_cli, fake_server, tmp_path):
    """--batch-api --batch-bytes 120,000: the attachments are counted, so the 200 rows'
    requests go in several files, each under the limit; the good rows are answered via
    batch with their parts checked at the server, and a request bigger than a file may
    be is a reject saying so."""
    src, expect = folder_of_scans(tmp_path)
    # ~160 KB as base64: more than a file holds
    (tmp_path / "data" / "scans" / "000.png").write_bytes(png(200, 200, seed=1))
    server = fake_server()
    out = tmp_path / "out.jsonl"
    limit = 120_000
    result = run_cli(
        "run", src, "-o", out, "--batch-api", "--batch-bytes", limit, "--poll-every", "0.05",
        "--base-url", server.base_url, "-m", "gpt-4o-mini", "--prompt", "{text}", "--id-field", "id",
        "--attach", "image", "--attach", "pages", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    inputs = [f.content for f in server.files.files.values() if f.purpose == "batch"]
    assert len(inputs) >= 3 and all(len(content) <= limit for content in inputs), [len(c) for c in inputs]
    rejects = {r["line"]: r["error"] for r in read_jsonl(out.with_name("out.jsonl.rejects.jsonl"))}
    assert "more than a batch file holds (--batch-bytes 120,000)" in rejects[1]
    records = by_id(out)
    bad = [cid for cid, name in expect.items() if isinstance(name, str)]
    assert set(records) == set(expect) - {*bad, "s0"}
    assert all(r["llmbatch"]["valid"] and r["llmbatch"]["via"] == "batch" for r in records.values())
    sent = [orjson.loads(line) for content in inputs for line in content.splitlines()]
    for line in sent:
        _, parts = chat_parts(line["body"])
        assert parts == expect[line["custom_id"]]


def test_the_estimate_counts_an_image_by_its_size(run_cli, tmp_path):
    """`estimate`: an image counts OpenAI's tiles (85 + 170 a 512 px tile, after fitting
    2048 px and a 768 px short side), not its base64: a 2048 x 4096 image is 1,105
    tokens however few bytes it has."""
    (tmp_path / "big.webp").write_bytes(webp(2048, 4096))
    (tmp_path / "small.png").write_bytes(png(40, 30))
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"p": "big.webp"}, {"p": "small.png"}, {"p": "https://x.org/a.png"}]
    )
    result = run_cli("estimate", src, "--provider", "fake", "--prompt", "Look.", "--attach", "p")
    assert result.exit_code == 0, result.output
    # 1,105 + 255 (one tile) + 765 (a URL: 1024 x 1024 stated) + the prompts' few tokens
    tokens = estimated_prompt_tokens(result.output)
    assert 1105 + 255 + 765 <= tokens < 1105 + 255 + 765 + 30, result.output


def test_image_sizes_and_tokens_follow_the_documented_rules():
    """The headers give the size of each kind; the tile counts match OpenAI's examples."""
    assert image_size(png(40, 30)) == (40, 30)
    assert image_size(jpeg(1000, 600)) == (1000, 600)
    assert image_size(gif(64, 48)) == (64, 48)
    assert image_size(webp(2048, 4096)) == (2048, 4096)
    assert image_size(b"%PDF-1.4") is None
    assert image_tokens(1024, 1024) == 765
    assert image_tokens(2048, 4096) == 1105
    assert image_tokens(4096, 8192, detail="low") == 85
    assert image_tokens(40, 30) == 255


def test_bytes_in_flight_are_bounded(run_cli, fake_server, tmp_path):
    """--max-inflight-bytes 1,500,000 with 640 KB (as base64) an image: at most three
    requests are on their way at once (the bound, plus the one that passed it), where
    -c 16 alone sends more; every row is written either way."""
    (tmp_path / "big.png").write_bytes(png(400, 400))
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "q": f"row {i}", "img": "big.png"} for i in range(24)]
    )
    for bound in ("1500000", None):
        server = fake_server(latency_ms=300)
        out = tmp_path / f"out-{bound}.jsonl"
        extra = ["--max-inflight-bytes", bound] if bound else []
        result = run_cli(
            "run", src, "-o", out, "--base-url", server.base_url, "-m", "gpt-4o-mini", "--prompt", "{q}",
            "--id-field", "id", "--attach", "img", "-c", "16", "--quiet", *extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert len(by_id(out)) == 24
        if bound:
            assert server.stats.max_in_flight <= 3
        else:
            assert server.stats.max_in_flight > 3


def test_an_attach_field_no_row_has_is_a_usage_error(run_cli, fake_server, tmp_path):
    """--attach naming a field the rows do not have: exit 2 before anything is sent,
    saying which flag to check; --attach for embeddings: exit 2 too."""
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "q": "hi", "image": "a.png"} for i in range(12)]
    )
    server = fake_server()
    base = [
        "run",
        src,
        "-o",
        tmp_path / "out.jsonl",
        "--base-url",
        server.base_url,
        "-m",
        "m",
        "--prompt",
        "{q}",
    ]
    result = run_cli(*base, "--attach", "imgae")
    assert result.exit_code == 2, result.output
    assert "missing --attach field 'imgae'" in result.stderr and "check --attach" in result.stderr
    result = run_cli(*base, "--attach", "image", "--endpoint", "/v1/embeddings")
    assert result.exit_code == 2 and "takes no attachments" in result.stderr, result.output
    assert server.stats.requests == 0
