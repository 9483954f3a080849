"""Files as attachments (``--attach FIELD``): a data item's field holding a local path,
a list of paths, or an http(s) or ``data:`` URL becomes images and PDFs the request
carries, each checked before its row is sent.

A local file (relative paths are relative to the input file's folder) is read and sent
base64-encoded, its media type told by its content (puremagic), never by its name; a
``data:`` URL is decoded and checked the same way. An http(s) URL is passed on unfetched
(only its scheme is checked): a path ending in ``.pdf`` is a PDF, anything else an
image. A missing file, a type that is neither an image (PNG, JPEG, GIF, WebP) nor a
PDF, or a file over the provider's documented size is an `InputError` for that row,
naming the file. Where the parts go in the body is each endpoint's
(`llmbatch.core.endpoints.base.Endpoint.attach`).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmbatch.core.attachments import Attachment, data_url, image_size, split_data_url
from llmbatch.core.errors import InputError

__all__ = ["LIMITS", "AttachLimits", "Attacher", "sniff"]

MB = 1024 * 1024
# What is read of a file to tell its type before its size is judged (a file over the
# limit is never read whole).
_HEAD = 64 * 1024
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WebP"}
PDF = "application/pdf"
SUPPORTED = "images (PNG, JPEG, GIF, WebP) and PDFs"


@dataclass(frozen=True, slots=True)
class AttachLimits:
    """A provider's documented limits: bytes an image, a PDF, and all of a request's
    (`base64`: counted as the base64 the request carries, as Anthropic counts them)."""

    image: int
    pdf: int
    request: int
    provider: str
    base64: bool = False

    def size(self, raw: int) -> int:
        """The bytes a file of `raw` bytes counts against these limits."""
        return 4 * -(-raw // 3) if self.base64 else raw


# Per provider (a provider with limits of its own adds its row here and its endpoint's
# content blocks in `Endpoint.attach`).
LIMITS = {
    # OpenAI: 20 MB an image; 32 MB of PDF content a request; 50 MB a request's payload.
    "openai": AttachLimits(image=20 * MB, pdf=32 * MB, request=50 * MB, provider="OpenAI"),
    # Anthropic: 5 MB an image (its base64, on the API); 32 MB a request, PDFs included.
    "anthropic": AttachLimits(image=5 * MB, pdf=32 * MB, request=32 * MB, provider="Anthropic", base64=True),
}


def sniff(head: bytes) -> str | None:
    """The media type of content starting with `head`, told by the content; None when
    it cannot be told."""
    import puremagic

    try:
        found = puremagic.from_string(head, mime=True)
    except (puremagic.PureError, ValueError):
        return None
    return str(found) or None


@dataclass(frozen=True, slots=True)
class Attacher:
    """Reads the attachments of a data item's `fields` (see the module docstring)."""

    fields: tuple[str, ...]
    folder: Path  # the input file's folder: relative paths start there
    limits: AttachLimits = LIMITS["openai"]

    def read(self, item: dict[str, Any], line: int) -> list[Attachment]:
        """The item's attachments, in field order; a null or empty field has none.
        Raises InputError naming the first file that cannot be attached, or the field
        when the item lacks it (made by every row, a mistake in the command)."""
        out: list[Attachment] = []
        for name in self.fields:
            if name not in item:
                raise InputError(f"missing --attach field {name!r}", line=line, kind="attach_field")
            value = item[name]
            if value is None or value == "" or value == []:
                continue
            values = value if isinstance(value, list) else [value]
            for one in values:
                if not isinstance(one, str) or not one:
                    raise InputError(
                        f"--attach {name}: expected a path, a URL or a list of them, not {one!r}", line=line
                    )
                out.append(self._one(one, name, line))
        total = sum(self.limits.size(a.size) for a in out)
        if total > self.limits.request:
            raise InputError(
                f"--attach: the attachments ({', '.join(a.name for a in out)}) hold {total / MB:.1f} MB"
                f"{' as base64' if self.limits.base64 else ''}, "
                f"more than the {self.limits.request // MB} MB a request to {self.limits.provider} may carry",
                line=line,
            )
        return out

    def _one(self, value: str, field: str, line: int) -> Attachment:
        if value.startswith("data:"):
            return self._data_url(value, field, line)
        if "://" in value:
            scheme = urlsplit(value).scheme.lower()
            if scheme not in ("http", "https"):
                raise InputError(f"--attach {field}: {value}: unsupported URL scheme {scheme}://", line=line)
            kind = "pdf" if urlsplit(value).path.lower().endswith(".pdf") else "image"
            return Attachment(kind=kind, media_type="", url=value, name=value, size=0)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.folder / path
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(_HEAD)
                kind, media_type = self._judge(head, size, value, field, line)
                data = head + f.read() if size > len(head) else head
        except FileNotFoundError:
            raise InputError(f"--attach {field}: file not found: {value}", line=line) from None
        except IsADirectoryError:
            raise InputError(f"--attach {field}: {value} is a folder, not a file", line=line) from None
        except OSError as exc:
            raise InputError(
                f"--attach {field}: cannot read {value}: {exc.strerror or exc}", line=line
            ) from None
        self._readable(kind, data, value, field, line)

        return Attachment(
            kind=kind, media_type=media_type, url=data_url(media_type, data), name=value, size=len(data)
        )

    def _data_url(self, value: str, field: str, line: int) -> Attachment:
        split = split_data_url(value)
        shown = value[:40] + "…" if len(value) > 40 else value
        if split is None:
            raise InputError(f"--attach {field}: {shown}: only base64 data: URLs are taken", line=line)
        try:
            data = base64.b64decode(split[1], validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"--attach {field}: {shown}: not valid base64", line=line) from None
        kind, media_type = self._judge(data[:_HEAD], len(data), shown, field, line)
        self._readable(kind, data, shown, field, line)
        if media_type != split[0]:  # told by the content, as a file's is
            value = f"data:{media_type};base64,{split[1]}"
        return Attachment(kind=kind, media_type=media_type, url=value, name="a data: URL", size=len(data))

    def _judge(self, head: bytes, size: int, name: str, field: str, line: int) -> tuple[str, str]:
        """(kind, media type) of content starting with `head`, `size` bytes in all; an
        InputError when the type is not taken or the size is over the limit."""
        media_type = sniff(head)
        if media_type in IMAGE_TYPES:
            kind, limit = "image", self.limits.image
        elif media_type == PDF:
            kind, limit = "pdf", self.limits.pdf
        else:
            what = f"type {media_type}" if media_type else "an unknown type (not an image or a PDF)"
            raise InputError(f"--attach {field}: {name} is {what}: only {SUPPORTED} are attached", line=line)
        if (counted := self.limits.size(size)) > limit:
            encoded = f" ({counted / MB:.1f} MB as base64)" if self.limits.base64 else ""
            raise InputError(
                f"--attach {field}: {name} is {size / MB:.1f} MB{encoded}, more than the {limit // MB} MB "
                f"{self.limits.provider} takes for {'an image' if kind == 'image' else 'a PDF'}",
                line=line,
            )
        assert media_type is not None
        return kind, media_type

    @staticmethod
    def _readable(kind: str, data: bytes, name: str, field: str, line: int) -> None:
        if kind == "image" and image_size(data) is None:
            raise InputError(
                f"--attach {field}: {name}: not a valid image (its size cannot be read)", line=line
            )
