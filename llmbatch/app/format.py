"""Numbers, money and durations as the panel, the plain lines, the summary, `estimate`
and `report` print them: one rule each."""

from __future__ import annotations

__all__ = ["duration", "minutes", "si", "usd"]


def usd(x: float | None) -> str:
    """Money: cents from a cent up ($0.62, $1,234.50), four decimals below ($0.0042);
    None is "unknown" (a cost is never shown as $0 for want of a price)."""
    if x is None:
        return "unknown"
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def si(x: float) -> str:
    """A count with a k, M or G suffix (1.2k)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def duration(seconds: float | None) -> str:
    """A clock-like duration (1h05m, 3m07s, 42s); None is "?"."""
    if seconds is None:
        return "?"
    mins, secs = divmod(int(seconds), 60)
    hours, mins = divmod(mins, 60)
    if hours:
        return f"{hours}h{mins:02d}m"
    return f"{mins}m{secs:02d}s" if mins else f"{secs}s"


def minutes(m: float) -> str:
    """A length of time given in minutes, in the unit that reads best (45 s, 3.5 min, 2.1 h)."""
    if m < 1:
        return f"{m * 60:.0f} s"
    if m < 120:
        return f"{m:.1f} min"
    return f"{m / 60:.1f} h"
