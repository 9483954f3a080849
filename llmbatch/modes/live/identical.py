"""With a response cache, identical requests in one run are sent once: the first is the
leader, the others wait here (holding no slot) for its answer, which answers them too
when it is valid for them (validators may look at the item, not only the request)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.values import Completion
from llmbatch.modes.live.job import Job
from llmbatch.modes.outcome import Cache, Outcomes, Verdict

__all__ = ["Identical"]


class Identical:
    """The cache's answers and the requests waiting for an identical one in flight."""

    def __init__(self, cache: Cache, outcomes: Outcomes) -> None:
        self.cache = cache
        self.outcomes = outcomes
        # Per fingerprint, the leader in flight and the jobs waiting for its answer.
        self._waiting: dict[int, tuple[Job, list[Job]]] = {}

    def needs_sending(self, job: Job) -> tuple[bool, Verdict | None]:
        """Whether the job needs a request of its own; when not, the verdict of the
        cached answer (FINISH, or RELEASE: a broken validator), or None: it follows an
        identical request in flight."""
        fp = job.request.fp
        cached = self.cache.get(fp, endpoint_of(job.request.url))
        if cached is not None:
            verdict = self.outcomes.from_cache(job, cached)
            if verdict is not None:
                return False, verdict
            job.live = True
        waiting = self._waiting.get(fp)
        if waiting is not None:
            waiting[1].append(job)
            return False, None
        self._waiting[fp] = (job, [])
        return True, None

    def _answered_by(self, follower: Job, leader: Job, answer: Completion) -> Verdict | None:
        """The leader's answer for a follower: on the model that gave it (--escalate: the
        leader may have gone on to another), which the follower's line then names."""
        if leader.rung == follower.rung:
            return self.outcomes.from_cache(follower, answer)
        asked = follower.request
        follower.request = dataclasses.replace(asked, body=leader.request.body)
        follower.rung = leader.rung
        verdict = self.outcomes.from_cache(follower, answer)
        if verdict is None:  # not valid for this item: it is asked itself, from its own start
            follower.request, follower.rung = asked, 0
        return verdict

    def lead_done(
        self,
        job: Job,
        answer: Completion | None,
        *,
        stopping: bool,
        finished: Callable[[Job, Verdict], None],
        again: Callable[[Job], None],
    ) -> None:
        """The leader of identical requests is done: a valid `answer` answers those that
        waited for it (`finished` is told of each); any other goes out on its own
        (`again`); when the run stops they are released (`finished` with RELEASE)."""
        waiting = self._waiting.get(job.request.fp)
        if waiting is None or waiting[0] is not job:
            return  # not a leader: a follower sent on its own, or no cache
        del self._waiting[job.request.fp]
        for follower in waiting[1]:
            follower.live = True
            if stopping:
                finished(follower, Verdict.RELEASE)
                continue
            verdict = self._answered_by(follower, job, answer) if answer is not None else None
            if verdict is None:
                again(follower)
            else:
                finished(follower, verdict)
