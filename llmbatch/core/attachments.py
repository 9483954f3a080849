"""Images and PDFs inside request bodies, as the token estimates see them: an attached
image costs what the provider bills for its size, not its base64 characters.

An image is counted the way OpenAI documents it for its tile-based models: scaled to
fit a 2048 x 2048 square, then so that its short side is at most 768 px, it costs 85
tokens plus 170 for each 512 px tile (``detail: low``: 85). The size is read from the
image's own header (PNG, JPEG, GIF, WebP), which every data URL carries; an image given
by an http(s) URL is not fetched, and counts as `DEFAULT_IMAGE_SIZE`. A PDF counts
`PDF_TOKENS_PER_PAGE` for each `PDF_BYTES_PER_PAGE` of its size (at least one page):
its text plus an image of each page, as the provider bills it, guessed without reading it.

Anthropic's ``image`` blocks are counted as Anthropic documents it: scaled so the long
edge is at most `ANTHROPIC_MAX_EDGE` px (and the image at most `ANTHROPIC_MAX_IMAGE_TOKENS`),
an image costs width x height / 750 tokens; its ``document`` blocks (PDFs) count as
a PDF above (Anthropic bills each page's text plus an image of it).

The content parts themselves (chat's ``image_url`` and ``file``, the Responses API's
``input_image`` and ``input_file``, Anthropic's ``image`` and ``document`` blocks) are
made by each endpoint's ``attach``, from what :mod:`llmbatch.input.attach` read.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANTHROPIC_MAX_EDGE",
    "ANTHROPIC_MAX_IMAGE_TOKENS",
    "DEFAULT_IMAGE_SIZE",
    "PART_TYPES",
    "PDF_BYTES_PER_PAGE",
    "PDF_TOKENS_PER_PAGE",
    "Attachment",
    "attached_bytes",
    "attachment_parts",
    "data_url",
    "image_size",
    "image_tokens",
    "messages_image_tokens",
    "part_tokens",
    "split_data_url",
]

# An image whose size cannot be read (an http(s) URL, passed on unfetched).
DEFAULT_IMAGE_SIZE = (1024, 1024)  # 765 tokens
# A PDF's guessed cost: this many tokens for each this many bytes of file.
PDF_TOKENS_PER_PAGE = 1_500
PDF_BYTES_PER_PAGE = 100_000
# The content part types that carry an attachment, and where each keeps its URL.
# Anthropic's blocks keep theirs in a "source" (base64 "data", or a "url").
PART_TYPES = {
    "image_url": "image",
    "input_image": "image",
    "file": "file",
    "input_file": "file",
    "image": "source",
    "document": "source",
}
# Anthropic: an image is scaled to this long edge, and to this many tokens, at most.
ANTHROPIC_MAX_EDGE = 1568
ANTHROPIC_MAX_IMAGE_TOKENS = 1600
_ANTHROPIC_PIXELS_PER_TOKEN = 750
_TILE = 512
_BASE, _PER_TILE = 85, 170
# How much of a data URL's base64 is decoded to find an image's size: a JPEG's size
# comes after its metadata (an EXIF thumbnail can be tens of kilobytes).
_HEAD_CHARS = 4096
_MAX_HEAD_CHARS = 1 << 20


@dataclass(frozen=True, slots=True)
class Attachment:
    """One file a request carries, checked (:mod:`llmbatch.input.attach`): an image or
    a PDF, by a ``data:`` URL (a local file, base64) or an http(s) URL passed on."""

    kind: str  # "image" or "pdf"
    media_type: str  # told by the content; "" for an http(s) URL (not fetched)
    url: str
    name: str  # the path or URL as the row gave it (errors name it)
    size: int  # bytes; 0 for an http(s) URL

    @property
    def inline(self) -> bool:
        return self.url.startswith("data:")

    @property
    def filename(self) -> str:
        """The name a file part carries: the path's last part ("file.pdf" for data)."""
        return (
            "file.pdf" if self.name.startswith("a data:") else self.name.replace("\\", "/").rsplit("/", 1)[-1]
        )


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def split_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 payload) of a base64 ``data:`` URL, or None."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[5:].split(";", 1)[0].lower(), payload


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or WebP header; None when `data` does not
    start as one of those (or is cut before its size)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


# JPEG markers that start a frame (SOF0-SOF15 less DHT, JPG and DAC) and so carry the size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Tokens an image of this size costs (OpenAI's tile method; see the module)."""
    if detail == "low":
        return _BASE
    if width <= 0 or height <= 0:
        width, height = DEFAULT_IMAGE_SIZE
    fit = min(1.0, 2048 / max(width, height))
    w, h = width * fit, height * fit
    short = min(1.0, 768 / min(w, h))
    w, h = w * short, h * short
    return _BASE + _PER_TILE * math.ceil(w / _TILE) * math.ceil(h / _TILE)


def messages_image_tokens(width: int, height: int) -> int:
    """Tokens an image of this size costs Anthropic (see the module)."""
    if width <= 0 or height <= 0:
        width, height = DEFAULT_IMAGE_SIZE
    fit = min(1.0, ANTHROPIC_MAX_EDGE / max(width, height))
    tokens = (width * fit) * (height * fit) / _ANTHROPIC_PIXELS_PER_TOKEN
    return max(1, math.ceil(min(tokens, ANTHROPIC_MAX_IMAGE_TOKENS)))


def _source_tokens(part: Mapping[str, Any]) -> int:
    """An Anthropic ``image`` or ``document`` block's tokens, from its source."""
    source = part.get("source")
    data = source.get("data") if isinstance(source, dict) else None
    if part.get("type") == "image":
        size = _data_image_size(data) if isinstance(data, str) else None
        return messages_image_tokens(*(size or DEFAULT_IMAGE_SIZE))
    return pdf_tokens(len(data) * 3 // 4 if isinstance(data, str) else PDF_BYTES_PER_PAGE)


def pdf_tokens(size: int) -> int:
    return PDF_TOKENS_PER_PAGE * max(1, math.ceil(size / PDF_BYTES_PER_PAGE))


def _data_image_size(payload: str) -> tuple[int, int] | None:
    """An image's size from the start of its base64, decoding no more than it needs."""
    n = _HEAD_CHARS
    while True:
        try:
            head = base64.b64decode(payload[:n])
        except (binascii.Error, ValueError):
            return None
        size = image_size(head)
        if size is not None or n >= len(payload) or n >= _MAX_HEAD_CHARS:
            return size
        n *= 4


def part_tokens(part: Mapping[str, Any]) -> int | None:
    """The tokens an attachment content part costs, or None for any other part."""
    kind = PART_TYPES.get(part.get("type"))  # type: ignore[arg-type]
    if kind is None:
        return None
    if kind == "source":
        return _source_tokens(part)
    if kind == "image":
        url = part.get("image_url")
        detail = "auto"
        if isinstance(url, dict):  # chat: {"url", "detail"}; Responses: the URL itself
            detail = str(url.get("detail") or "auto")
            url = url.get("url")
        else:
            detail = str(part.get("detail") or "auto")
        split = split_data_url(url) if isinstance(url, str) else None
        size = _data_image_size(split[1]) if split is not None else None
        return image_tokens(*(size or DEFAULT_IMAGE_SIZE), detail=detail)
    inner = part.get("file")
    holder = inner if isinstance(inner, dict) else part
    payload = holder.get("file_data")
    return pdf_tokens(len(payload) * 3 // 4 if isinstance(payload, str) else PDF_BYTES_PER_PAGE)


def attached_bytes(value: Any) -> int:
    """Characters of attached data (data: URLs, file data) in a prompt value."""
    n = 0
    for part in attachment_parts(value):
        for holder in (part, part.get("image_url"), part.get("file"), part.get("source")):
            if isinstance(holder, dict):
                for key in ("url", "image_url", "file_data", "data"):
                    if isinstance(data := holder.get(key), str):
                        n += len(data)
    return n


def attachment_parts(value: Any) -> Iterator[Mapping[str, Any]]:
    """The attachment parts in a prompt value: chat's messages or the Responses API's
    input items, each with a list of content parts."""
    if not isinstance(value, list):
        return
    for item in value:
        if isinstance(item, dict):
            content = item.get("content")
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and part.get("type") in PART_TYPES:
                        yield part
            elif item.get("type") in PART_TYPES:
                yield item
