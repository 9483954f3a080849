"""Service tiers: the ``service_tier`` a request body asks for (``--service-tier``, or the
body's own), read in one place.

OpenAI's tiers: ``default`` (standard processing), ``flex`` (slower, billed at Batch API
prices, answered with a 429 "Resource Unavailable" when it has no capacity: a
`~llmbatch.core.errors.CapacityError`), ``priority`` (faster, dearer) and ``auto`` (the
project's setting decides). An answer says which tier served it in its own
``service_tier``. The tier does not change what is asked: the request fingerprint leaves
it out (`llmbatch.input.build.fingerprint`), so a fallback to the default tier, or a rerun
with another tier, answers the same request.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmbatch.core.values import Request

__all__ = ["DEFAULT_TIER", "FLEX", "FLEX_TIMEOUT", "PRIORITY", "SERVICE_TIERS", "on_tier", "tier_of"]

FLEX = "flex"
PRIORITY = "priority"
DEFAULT_TIER = "default"
SERVICE_TIERS = (FLEX, PRIORITY, DEFAULT_TIER, "auto")
# OpenAI advises a 15-minute timeout for flex requests, which may queue for capacity.
FLEX_TIMEOUT = 900.0


def tier_of(body: Any) -> str | None:
    """The tier a request body (or an answer) names, if any."""
    tier = body.get("service_tier") if isinstance(body, dict) else None
    return tier if isinstance(tier, str) and tier else None


def on_tier(request: Request, tier: str) -> Request:
    """The same request asked on `tier` (its fingerprint kept: the tier is not part of
    what is asked)."""
    return replace(request, body={**request.body, "service_tier": tier})
