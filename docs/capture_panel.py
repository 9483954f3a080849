"""Draw the live panel mid-run of the demo, into docs/panel.svg and docs/panel.txt.

Runs the demo batch (samples/reviews.jsonl with the review template and schema) in
process on the offline fake model, made slow (800 ms an answer) so the run lasts a few
seconds, priced at gpt-4o's list price, with account limits the run stays under. Once
half the items are written, the run's own panel is drawn from its real counters.

    python docs/capture_panel.py
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from llmbatch.app import run as run_module
from llmbatch.app.display import Display
from llmbatch.app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
WIDTH = 80
COMMAND = (
    "llmbatch run samples/reviews.jsonl -o demo-output.jsonl --provider fake "
    "--template samples/review_prompt.txt --id-field id --schema samples/review.schema.json "
    "--fake-latency-ms 800 --concurrency 4 --rpm 600 --tpm 60000 --price-in 2.5 --price-out 10"
)


class RememberedDisplay(Display):
    """The run's own display, kept so the panel can be drawn from the run's counters."""

    last: Display | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RememberedDisplay.last = self


async def capture(out_dir: Path) -> Console:
    settings = Settings(
        input=SAMPLES / "reviews.jsonl",
        output=out_dir / "demo-output.jsonl",
        provider="fake",
        prompt=(SAMPLES / "review_prompt.txt").read_text(encoding="utf-8"),
        id_field="id",
        schema=SAMPLES / "review.schema.json",
        fresh=True,
        fake_latency_ms=800,
        concurrency=4,
        rpm=600,
        tpm=60_000,
        price_in=2.5,
        price_out=10,
        quiet=True,  # the panel is drawn below, once, from the run's counters
    )
    run_module.Display = RememberedDisplay  # type: ignore[attr-defined]
    run = asyncio.create_task(run_module.run_async(settings, console=Console(file=io.StringIO())))
    screen = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True)
    while not run.done():
        await asyncio.sleep(0.05)
        display = RememberedDisplay.last
        if display is not None and display.stats.total and display.stats.done * 2 >= display.stats.total:
            screen.print(display.view)
            break
    await run
    return screen


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        screen = asyncio.run(capture(Path(tmp)))
    docs = Path(__file__).resolve().parent
    text = screen.export_text(clear=False)
    if not text.strip():
        raise SystemExit("the run ended before the panel was drawn")
    (docs / "panel.txt").write_text(f"$ {COMMAND}\n\n{text}", encoding="utf-8")
    screen.save_svg(str(docs / "panel.svg"), title="llmbatch")
    print(text, end="")


if __name__ == "__main__":
    main()
