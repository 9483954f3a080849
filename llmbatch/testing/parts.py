"""What the test servers check of a request's images and PDFs, as OpenAI and Anthropic
do: each endpoint's own part types, base64 that decodes, and a media type the content
bears out (and, for Anthropic, an image's base64 within 5 MB). A request failing a check
gets a 400 (live) or its batch line an error, so a test sees at the server what a wrong
part would cost."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from llmbatch.core.attachments import attachment_parts, image_size, split_data_url
from llmbatch.core.endpoints import CHAT, MESSAGES, RESPONSES
from llmbatch.input.attach import sniff

__all__ = ["IMAGE_TYPES", "MESSAGES_IMAGE_BASE64", "bad_part"]

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_OWN = {
    CHAT: frozenset({"image_url", "file"}),
    RESPONSES: frozenset({"input_image", "input_file"}),
    MESSAGES: frozenset({"image", "document"}),
}
# Anthropic's most base64 an image block may carry.
MESSAGES_IMAGE_BASE64 = 5 * 1024 * 1024


def bad_part(path: str, body: dict[str, Any]) -> str | None:
    """Why the attachments of a request to `path` would be refused, or None."""
    own = _OWN.get(path)
    for key in ("messages", "input"):
        for part in attachment_parts(body.get(key)):
            kind = part.get("type")
            if own is None or kind not in own:
                return f"Invalid content part type '{kind}' for {path}."
            if kind in ("image", "document"):
                problem = _bad_block(part)
                if problem is not None:
                    return problem
                continue
            if kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else None
            elif kind == "input_image":
                url = part.get("image_url")
            else:
                holder = part.get("file") if kind == "file" else part
                if not isinstance(holder, dict):
                    return "Invalid file part."
                if kind == "input_file" and isinstance(holder.get("file_url"), str):
                    continue
                if not holder.get("filename"):
                    return "A file part needs a filename."
                url = holder.get("file_data")
            problem = _bad_data(url, pdf=kind in ("file", "input_file"))
            if problem is not None:
                return problem
    return None


def _bad_data(url: Any, *, pdf: bool) -> str | None:
    if not isinstance(url, str):
        return "The part has no URL."
    if url.startswith(("http://", "https://")) and not pdf:
        return None
    split = split_data_url(url)
    if split is None:
        return "Expected a base64 data URL."
    media_type, payload = split
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "Invalid base64 data."
    if pdf:
        ok = media_type == "application/pdf" and data.startswith(b"%PDF-")
        return None if ok else f"Invalid file data: expected a PDF, got {media_type}."
    if media_type not in IMAGE_TYPES or image_size(data) is None:
        return f"Invalid image data ({media_type}): you uploaded an unsupported image."
    return None


def _bad_block(block: Mapping[str, Any]) -> str | None:
    """Why Anthropic would refuse an ``image`` or ``document`` block, or None."""
    kind = block["type"]
    source = block.get("source")
    if not isinstance(source, dict):
        return f"{kind}.source: Field required"
    if source.get("type") == "url":
        url = source.get("url")
        return None if isinstance(url, str) and url.startswith(("http://", "https://")) else "Invalid URL."
    if source.get("type") != "base64":
        return f"{kind}.source.type: Input should be 'base64' or 'url'"
    media_type, payload = source.get("media_type"), source.get("data")
    if not isinstance(payload, str):
        return f"{kind}.source.data: Field required"
    allowed = IMAGE_TYPES if kind == "image" else frozenset({"application/pdf"})
    if media_type not in allowed:
        return f"{kind}.source.media_type: Input should be one of {', '.join(sorted(allowed))}"
    if kind == "image" and len(payload) > MESSAGES_IMAGE_BASE64:
        size = f"{len(payload)} bytes > {MESSAGES_IMAGE_BASE64} bytes"
        return f"{kind}.source.base64: image exceeds 5 MB maximum: {size}"
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return f"{kind}.source.base64: invalid base64 data"
    found = sniff(data[:65536])
    if found != media_type or (kind == "image" and image_size(data) is None):
        return (
            f"{kind}.source.base64: The {kind} was specified using the {media_type} media type, "
            f"but it does not appear to be a valid {media_type} {kind}"
        )
    return None
