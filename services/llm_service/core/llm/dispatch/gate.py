"""The dispatcher's admission: a slot on the first of a model's deployments that can take a request, now
or after a wait in that model's bounded line, or a refusal that says why.

- With room (a breaker that admits traffic, limits with room: `DeploymentPool.try_take`) and nobody
  waiting ahead, the slot is taken at once, without a coroutine or timer of its own.
- Otherwise the refusals waiting cannot help are said at once: every deployment open-circuited (503),
  a request above every deployment's whole TPM (400), room that only time frees and later than the queue
  would wait (429 with when to come back). Then the request waits in its model's FIFO line
  (`AdmissionQueue`): a full line or a wait past `queue_timeout_seconds` is a 429 with Retry-After. Room
  that comes back with time (a window moving on, a 429 pause or a breaker's cooldown ending) is announced
  by no release, so a waiting request looks again when it is due.
- With state shared by replicas (Redis), admission is one round trip for all the candidates; the head of
  the line asks again on every release here and, for releases elsewhere, every poll interval.

Each model (an alias's deployments, or one directly addressed deployment) has its own line; a directly
addressed model's line is dropped once empty. Refusals are counted by the `reject` callback (metrics).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial

from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.admission import AdmissionError, AdmissionQueue
from llm_service.core.llm.dispatch.pool import DeploymentPool, Slot
from llm_service.core.llm.models import DeploymentsUnavailableError, InvalidRequestError, OverloadedError

#: Shortest pause between re-checks of a waiting request when room is due now but was not taken.
_RECHECK_FLOOR = 0.25

Model = tuple[Deployment, ...]


class Gate:
    def __init__(
        self,
        pool: DeploymentPool,
        models: Iterable[Model],
        *,
        max_queue_size: int,
        queue_timeout: float,
        clock: Callable[[], float],
        reject: Callable[[str], None] | None = None,
    ) -> None:
        """`models`: the profile's aliases' deployments, each the very tuple requests will be admitted for
        (their lines live as long as the gate)."""
        self._pool = pool
        self._queue_size, self._queue_timeout = max_queue_size, queue_timeout
        self._clock = clock
        self._reject_counted = reject
        self._queues: dict[Model, AdmissionQueue[Slot]] = {}
        #: The aliases' own wait lines, by the identity of the deployment tuple `resolve` hands out (it
        #: is always the same object): no hashing of deployments per request (a pydantic model hashes
        #: all its fields, about 2 µs).
        self._alias_queues: dict[int, AdmissionQueue[Slot]] = {}
        models = tuple(models)
        self._kept = frozenset(models)
        # In the profile's order: a release wakes the lines in the order they were made (`capacity_freed`), so
        # which alias's request a shared deployment's freed slot goes to does not move with the hash seed.
        for key in models:
            self._alias_queues[id(key)] = self._queue(key)

    @property
    def depth(self) -> int:
        """Requests waiting, in every line."""
        return sum(queue.depth for queue in self._queues.values())

    def waiting(self) -> dict[Model, AdmissionQueue[Slot]]:
        """The lines with requests in them."""
        return {key: queue for key, queue in self._queues.items() if queue.depth}

    def capacity_freed(self) -> None:
        """A slot was released here: the head of every line looks again."""
        for queue in list(self._queues.values()):
            queue.notify()

    async def admit(self, key: Model, candidates: Sequence[Deployment], tokens: int) -> Slot:
        """A slot on the first of `candidates` that can take the request, waiting in `key`'s line if none
        can now; the refusals that waiting cannot help are said at once."""
        if not self._pool.local:
            self._refuse_early(candidates, tokens)
            return await self._admit_shared(key, self._queue(key), candidates, tokens)
        queue = self._queue(key)
        try_take = partial(self._pool.try_take, candidates, tokens)
        slot = queue.admit_now(try_take)
        if slot is not None:  # no wait: no refusals to look for, no recheck task (~40 µs a request)
            self._forget_if_idle(key, queue)
            return slot
        rechecks: asyncio.Future[None] | None = None
        try:
            self._refuse_early(candidates, tokens)  # what try_take refused may be worth saying at once
            rechecks = asyncio.ensure_future(self._recheck_while_waiting(queue, candidates, tokens))
            return await queue.admit(try_take, on_abandoned=Slot.abandoned)
        except AdmissionError as exc:
            raise self._overloaded(exc) from None
        finally:
            if rechecks is not None:
                rechecks.cancel()
            self._forget_if_idle(key, queue)

    def _queue(self, key: Model) -> AdmissionQueue[Slot]:
        """The wait line of requests for these deployments (one per model), made when first needed."""
        queue = self._alias_queues.get(id(key))
        if queue is not None:
            return queue
        queue = self._queues.get(key)
        if queue is None:
            queue = AdmissionQueue(max_size=self._queue_size, timeout=self._queue_timeout, clock=self._clock)
            self._queues[key] = queue
        return queue

    def _forget_if_idle(self, key: Model, queue: AdmissionQueue[Slot]) -> None:
        if queue.depth == 0 and id(key) not in self._alias_queues and key not in self._kept:
            self._queues.pop(key, None)  # a directly addressed model's line: gone when empty

    async def _admit_shared(
        self, key: Model, queue: AdmissionQueue[Slot], candidates: Sequence[Deployment], tokens: int
    ) -> Slot:
        """`admit` through state shared with other replicas: one round trip; when it finds no room, the
        refusals that waiting cannot help (with what it learnt), else a wait in line whose head asks again
        on every release here and, for releases elsewhere, every poll interval."""
        poll = self._pool.poll_interval

        def retry_in() -> float:
            wait = self._pool.next_change(candidates, tokens)
            return max(wait, poll) if wait < math.inf else poll

        try:
            return await queue.admit_async(
                partial(self._pool.take, candidates, tokens),
                retry_in=retry_in,
                before_waiting=partial(self._refuse_early, candidates, tokens),
            )
        except AdmissionError as exc:
            raise self._overloaded(exc) from None
        finally:
            self._forget_if_idle(key, queue)

    def _overloaded(self, exc: AdmissionError) -> OverloadedError:
        self._reject("queue_full_or_timeout")
        return OverloadedError(
            f"The service is at capacity for this model ({exc}); retry after the time given.",
            retry_after=exc.retry_after,
        )

    def _refuse_early(self, candidates: Sequence[Deployment], tokens: int) -> None:
        """Raise the refusals that waiting cannot help: every deployment open-circuited (503), a request
        too large for every TPM limit (400), room that only time frees, later than the queue's timeout (429)."""
        open_for = self._pool.all_open(candidates)
        if open_for is not None:
            self._reject("deployments_unavailable")
            raise DeploymentsUnavailableError(
                "Every deployment of this model is failing and temporarily taken out of service.",
                retry_after=max(open_for, 1.0),
            )
        if self._pool.too_large(candidates, tokens):
            raise InvalidRequestError(
                f"The request (about {tokens} tokens) exceeds the tokens-per-minute limit of every deployment "
                "of this model.",
                code="tokens_per_minute_exceeded",
                param="messages",
            )
        wait = self._pool.next_change(candidates, tokens)
        if self._queue_timeout < wait < math.inf and self._pool.room_in(candidates, tokens) > 0:
            # Only time frees this room (a 429 pause, a full RPM window), and later than a queued caller
            # would wait: say when to come back now rather than hold the connection for nothing.
            self._reject("rate_limited")
            raise OverloadedError(
                "The deployments of this model are rate limited; retry after the time given.", retry_after=wait
            )

    async def _recheck_while_waiting(
        self, queue: AdmissionQueue[Slot], candidates: Sequence[Deployment], tokens: int
    ) -> None:
        """Room that comes back with time (an RPM/TPM window moving on, a 429 pause or a breaker's
        cooldown ending) is announced by no release: look again when it is due, while this request waits."""
        while True:
            wait = self._pool.next_change(candidates, tokens)
            # Real time, not the injected retry sleep: this only paces wake-ups of a queue that also
            # wakes on every release.
            await asyncio.sleep(min(wait, self._queue_timeout) if wait > 0 else _RECHECK_FLOOR)
            queue.notify()

    def _reject(self, reason: str) -> None:
        if self._reject_counted is not None:
            self._reject_counted(reason)
