"""The rate-limit headers a server announces its limits by, by family: OpenAI's
(``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``); Anthropic's
(``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining,reset}``,
its input tokens read as the ``tokens`` kind, its output tokens as a kind of their own,
``output``; its reset is an RFC 3339 time); the LiteLLM proxy's own key
limit (``x-ratelimit-api_key-{limit,remaining}-*``, without a reset header: a minute's
window, as every limit here is); an upstream's as the LiteLLM proxy forwards them
(``llm_provider-x-ratelimit-*``). The limits (:mod:`llmbatch.schedule.limits`) read an
answer by one family: the first found, looked for among the others only in a run's
first answers, so a server that announces nothing costs four lookups an answer."""

from __future__ import annotations

__all__ = ["ANY_NAMES", "FAMILIES", "FAMILY_PROBES", "KINDS", "OUTPUT"]

KINDS = ("requests", "tokens")
# Anthropic's output tokens per minute: a limit of their own beside the input tokens'.
OUTPUT = "output"
_ANTHROPIC = {"requests": "requests", "tokens": "input-tokens", OUTPUT: "output-tokens"}
# Per kind, its limit, remaining and reset header names, by family: OpenAI's; LiteLLM's
# own key limit (no reset header: a minute's window, as every limit here is); an
# upstream's as the LiteLLM proxy forwards them. An answer is read by one family: the
# first found (looked for among the others only in a run's first answers, so a server
# that announces nothing costs four lookups an answer, as before).
FAMILIES: tuple[dict[str, tuple[str, str, str | None]], ...] = (
    {k: (f"x-ratelimit-limit-{k}", f"x-ratelimit-remaining-{k}", f"x-ratelimit-reset-{k}") for k in KINDS},
    {k: (f"x-ratelimit-api_key-limit-{k}", f"x-ratelimit-api_key-remaining-{k}", None) for k in KINDS},
    {
        k: (
            f"anthropic-ratelimit-{n}-limit",
            f"anthropic-ratelimit-{n}-remaining",
            f"anthropic-ratelimit-{n}-reset",
        )
        for k, n in _ANTHROPIC.items()
    },
    {
        k: (
            f"llm_provider-x-ratelimit-limit-{k}",
            f"llm_provider-x-ratelimit-remaining-{k}",
            f"llm_provider-x-ratelimit-reset-{k}",
        )
        for k in KINDS
    },
)
# What a server that announces limits sends on every answer: one is enough to look further.
ANY_NAMES = tuple(tuple(name for kind in KINDS for name in family[kind][:2]) for family in FAMILIES)
# Answers in which the other families are looked for, while the first finds nothing.
FAMILY_PROBES = 64
