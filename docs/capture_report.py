"""Take docs/report.png: the page `make demo` writes (demo-report.html), as headless
chromium draws it (llmbatch.testing.browser; Debian's chromium must be installed).

    make demo && python docs/capture_report.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from llmbatch.testing.browser import look

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    page = ROOT / "demo-report.html"
    if not page.is_file():
        print("no demo-report.html: run `make demo` first", file=sys.stderr)
        return 2
    seen = asyncio.run(look(page, width=1280, height=900))
    if seen.errors or seen.requests:
        print(f"the page misbehaved: {seen.errors or seen.requests}", file=sys.stderr)
        return 1
    (ROOT / "docs" / "report.png").write_bytes(seen.screenshot)
    print(f"docs/report.png: {len(seen.screenshot):,} bytes, {len(seen.charts)} charts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
