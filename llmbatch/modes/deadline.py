"""``--deadline TIME`` with ``--batch-api``: the Batch API's half price, and done by a
time all the same.

The run submits its batches as usual. While they run, it estimates how long the live
API would take to finish what is still unanswered (the items of the open batches less
those the provider says are done), from the live rate, plus the time a cancel takes
(two polls: it is seen, then collected) and ``--deadline-margin`` on both (20%: a
cancel may take longer, and answers that come back invalid are asked again).
When that reaches the deadline it goes live (`llmbatch.modes.batch.golive`): the
running batches are cancelled, what they finished is collected, and the rest is sent
live. The batches' answers are only out when a batch ends, so with every line answered
it still goes live (cancels, and collects them all) when only the cancel's time is left.
No item is paid twice: an item is sent live only once its batch has ended
(cancelled, expired or completed) and its result file says it was not run.

The live rate comes from ``--rpm`` / ``--tpm`` when given (the tokens of an item from
the batches' own input and the answer's ceiling); else from the first few items, sent
live at the start (`PROBES`): the limits their answers' headers announce, else the
concurrency over their latency. The run says which it assumes in one line.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmbatch.core.errors import ConfigError

__all__ = [
    "DEFAULT_DEADLINE_MARGIN",
    "PROBES",
    "Deadline",
    "LiveRate",
    "parse_deadline",
]

DEFAULT_DEADLINE_MARGIN = 0.2
PROBES = 3  # items sent live at the start when no limit is given
# A cancel is seen at the next poll and collected by the one after: the time it takes.
CANCEL_POLLS = 2
_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile("".join(f"(?:{_NUMBER}{unit})?" for unit in "dhms"))


def parse_deadline(text: str, now: float | None = None) -> float:
    """The deadline as a Unix time: a duration from now (``90s``, ``45m``, ``6h``,
    ``1h30m``, ``2d``) or an ISO time (``2026-12-04T07:00``, with an offset or in local
    time; a time alone, ``07:00``, is today's). A ConfigError names what is wrong,
    including a deadline already passed."""
    now = time.time() if now is None else now
    text = text.strip()
    match = _DURATION.fullmatch(text.lower())
    if text and match is not None and any(match.groups()):
        d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
        at = now + ((d * 24 + h) * 60 + m) * 60 + s
    else:
        at = _iso(text, now)
    if at <= now:
        when = dt.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
        raise ConfigError(f"--deadline {text} has already passed ({when}); nothing was sent")
    return at


def _iso(text: str, now: float) -> float:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            clock = dt.time.fromisoformat(text)
        except ValueError:
            raise ConfigError(
                "--deadline must be an ISO time (2026-12-04T07:00, 07:00) or a duration (6h, 90m), "
                f"not {text!r}"
            ) from None
        today = dt.datetime.fromtimestamp(now).date()
        moment = dt.datetime.combine(today, clock)
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class LiveRate:
    """Items a second the live API can finish, and what that figure assumes."""

    per_second: float
    why: str


def rate_from_limits(
    rpm: float | None, tpm: float | None, tokens_per_item: float, *, source: str
) -> LiveRate | None:
    """The rate the limits allow (the lower of the two), or None without either."""
    rates = []
    parts = []
    if rpm:
        rates.append(rpm / 60)
        parts.append(f"{rpm:,.0f} requests/min")
    if tpm and tokens_per_item > 0:
        rates.append(tpm / 60 / tokens_per_item)
        parts.append(f"{tpm:,.0f} tokens/min at ~{tokens_per_item:,.0f} a request")
    if not rates:
        return None
    return LiveRate(min(rates), f"{' and '.join(parts)} ({source})")


def rate_from_latency(concurrency: int, seconds: float) -> LiveRate:
    """No limit known: `concurrency` requests in flight, each taking `seconds`."""
    seconds = max(seconds, 1e-3)
    return LiveRate(
        concurrency / seconds,
        f"no limits announced: {concurrency} in flight at {seconds * 1000:,.0f} ms a request (measured)",
    )


class Deadline:
    """When to stop waiting for the batches and send the rest live."""

    def __init__(
        self,
        at: float,
        *,
        margin: float = DEFAULT_DEADLINE_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.at = at
        self.margin = margin
        self.clock = clock
        self.rate: LiveRate | None = None
        self.started = clock()
        self.went_live: float | None = None  # seconds into the run it went live, once it has
        self.left_then = 0  # items left when it went live

    def live_seconds(self, left: int, poll: float) -> float:
        """The time to finish `left` items from now if the batches are cancelled now:
        the cancel (seen at the next poll, collected at the one after) and the live time
        for them, the margin on both."""
        assert self.rate is not None
        return (left / self.rate.per_second + CANCEL_POLLS * poll) * (1 + self.margin)

    def due(self, left: int, poll: float) -> bool:
        """Whether `left` items must go live now to be done by the deadline (a poll from
        now being the next chance to tell)."""
        return self.clock() + poll + self.live_seconds(left, poll) >= self.at

    def wait(self, left: int, poll: float) -> float:
        """Seconds until it may be due, at most `poll`."""
        return max(0.0, min(poll, self.at - self.live_seconds(left, poll) - poll - self.clock()))

    def passed(self) -> bool:
        return self.clock() >= self.at

    def when(self) -> str:
        return dt.datetime.fromtimestamp(self.at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
