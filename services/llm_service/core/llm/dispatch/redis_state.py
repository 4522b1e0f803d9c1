"""`StateBackend` in Redis: several replicas admit against one set of limits and avoid the same failing
deployments.

- Admission is one script (`redis_scripts.ACQUIRE`), one round trip, batched with whatever else was
  asked in the same turn of the event loop (`RedisLink`): the first of the candidate deployments whose
  breaker is not held open, whose 429 pause is over and whose concurrency, RPM and TPM have room, taken
  atomically for every replica.
- A concurrency slot is a lease: renewed every third of `slot_lease_seconds` while its request runs,
  freed when it ends, and reclaimed by the next admission once expired when its replica died.
- The end of a request (lease freed, tokens corrected), a breaker opening here, a 429 pause,
  checkpoints and resumable streams' events (`redis_streams.py`) are written in the background, in the
  same batches.
- Redis unreachable (a call fails or times out): the backend turns `degraded` and `local`, each replica
  admits on its own share of the limits (`SharedLimiter`), checkpoints stay in this process, and Redis is
  tried again every `redis_retry_seconds`; when it answers, shared admission resumes (leases still held
  are renewed at once, coming back if Redis lost them). Each change is logged once, on
  `llm_service.state`. The URL is never logged: it may hold the password.
- Redis answering a command with an error (`link_down()` tells it from the link failing; typically out of
  memory under `noeviction`) is no outage: a background write so refused is lost (what it carried is
  best-effort), counted in `error_replies` and warned of at most once per `ERROR_LOG_SECONDS` per error
  class, and the limits stay shared. But the limits need their own writes: a refused admission or lease
  renewal turns the backend degraded as an outage does, and it comes back only once Redis takes a write.
  One refused again and again right after coming back (a key of the wrong type, a script Redis will not
  run) would flap between shared and local at every retry: each refusal within `MAX_RETRY_SECONDS` of
  coming back doubles the wait before the next try, up to `MAX_RETRY_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_service.core.config.scale_out import ScaleOutSettings
from llm_service.core.config.settings import Deployment
from llm_service.core.llm.dispatch.breaker import (
    REASON_HEALTH_CHECK_PASSED,
    REASON_OPENED_ELSEWHERE,
    BreakerState,
    Transition,
)
from llm_service.core.llm.dispatch.limits import DeploymentLimiter, Limits
from llm_service.core.llm.dispatch.redis_link import RedisLink, link_down, script_command
from llm_service.core.llm.dispatch.redis_scripts import ACQUIRE, CALLER, HOLD, KEY_KINDS, RENEW, SETTLE
from llm_service.core.llm.dispatch.redis_streams import RedisStreamLog
from llm_service.core.llm.dispatch.shared_limiter import SharedLimiter
from llm_service.core.llm.dispatch.state import REFUSED, UNREACHABLE, Acquired, MemoryCheckpoints, StateUnavailable

log = logging.getLogger("llm_service.state")

Clock = Callable[[], float]

#: At most one warning per error class in this many seconds (of the injected clock) for commands Redis
#: answered with an error: a full Redis refuses every write, and one line a minute says so.
ERROR_LOG_SECONDS = 60.0
#: The longest wait before a backend that Redis keeps refusing tries it again (s; the injected clock's).
MAX_RETRY_SECONDS = 300.0
#: What each reason for not sharing the limits says: in `StateUnavailable`, when the replica degrades, and
#: when it comes back.
_SAID = {UNREACHABLE: "unreachable", REFUSED: "refuses the limits' writes"}
_LOST = {
    reason: f"shared state {said}: serving on this replica's share of the limits" for reason, said in _SAID.items()
}
_FOUND = {
    UNREACHABLE: "shared state reachable again: limits shared",
    REFUSED: "shared state takes the limits' writes again: limits shared",
}


class RedisState:
    replicated = True

    def __init__(
        self,
        client: Redis,
        *,
        checkpoints: MemoryCheckpoints,
        prefix: str = "llm:",
        replicas: int = 1,
        lease_seconds: float = 30.0,
        retry_seconds: float = 2.0,
        poll_seconds: float = 0.1,
        timeout: float = 0.5,
        clock: Clock = time.monotonic,
        server_clock: Clock | None = None,
    ) -> None:
        """`clock` is this replica's (hints, its own limiters); `server_clock` the time the scripts count
        in, None for the Redis server's own (what replicas on several hosts must share)."""
        self._client = client
        self._link = RedisLink(client, on_error=self._failed)
        self._checkpoints = checkpoints
        self._prefix = prefix
        self._replicas = replicas
        self._lease = lease_seconds
        self._retry = retry_seconds
        self._poll = poll_seconds
        self._timeout = timeout
        self._clock = clock
        self._server_clock = server_clock
        #: Why the limits are not shared now (state.DEGRADED_REASONS); None while they are.
        self._reason: str | None = None
        self._changed_at = clock()
        #: The leases of this replica's running requests: lease id -> its slots key.
        self._leases: dict[str, str] = {}
        self._ids = map("{}:{}".format, itertools.repeat(secrets.token_hex(6)), itertools.count())
        self._task: asyncio.Task[None] | None = None
        self._streams: RedisStreamLog | None = None
        self._error_replies: dict[str, int] = {}
        self._error_logged_at: dict[str, float] = {}
        #: Degradations by a refusal (not the link), each soon after coming back; when to try Redis again.
        self._refused_in_a_row = 0
        self._retry_at = -math.inf

    @classmethod
    def from_settings(cls, settings: ScaleOutSettings, *, clock: Clock, checkpoints: MemoryCheckpoints) -> RedisState:
        assert settings.redis_url is not None
        timeout = settings.redis_timeout_seconds
        pool = ConnectionPool.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # an unreachable Redis is found at once: the replica has its share
        )
        return cls(
            Redis(connection_pool=pool),
            checkpoints=checkpoints,
            prefix=settings.redis_key_prefix,
            replicas=settings.replicas,
            lease_seconds=settings.slot_lease_seconds,
            retry_seconds=settings.redis_retry_seconds,
            poll_seconds=settings.redis_poll_seconds,
            timeout=timeout,
            clock=clock,
        )

    # ------------------------------------------------------------------ the protocol

    @property
    def local(self) -> bool:
        return self._reason is not None

    @property
    def degraded(self) -> bool:
        return self._reason is not None

    @property
    def degraded_reason(self) -> str | None:
        return self._reason

    @property
    def poll_interval(self) -> float:
        return math.inf if self.degraded else self._poll

    @property
    def error_replies(self) -> Mapping[str, int]:
        return self._error_replies

    def limiter(self, deployment: Deployment) -> DeploymentLimiter:
        keys = tuple(self._key(kind, deployment) for kind in KEY_KINDS)
        return SharedLimiter(Limits.of(deployment), keys=keys, replicas=self._replicas, link=self, clock=self._clock)

    async def acquire(self, limiters: Sequence[DeploymentLimiter], tokens: int) -> Acquired:
        shared = [limiter for limiter in limiters if isinstance(limiter, SharedLimiter)]
        if len(shared) != len(limiters):
            raise TypeError("RedisState admits only on the limiters it made")
        self.start()
        lease = next(self._ids)
        keys = [key for limiter in shared for key in limiter.keys]
        args: list[Any] = [self._now(), tokens, lease, self._lease]
        args += [value for limiter in shared for value in limiter.limit_args]
        reply = self._link.call(script_command(ACQUIRE, keys, args))
        try:
            answer = await asyncio.shield(reply)
        except asyncio.CancelledError:  # the caller left: what was granted for it is given back
            reply.add_done_callback(lambda done: self._abandoned(done, shared, tokens, lease))
            raise
        except Exception as exc:
            raise self._unshared(exc) from None
        return self._granted(answer, shared, tokens, lease)

    async def admit_caller(self, caller: str, rpm: int) -> float | None:
        if self.degraded:
            raise self._unavailable()
        self.start()
        command = script_command(CALLER, [self._prefix + "caller:" + caller], [self._now(), rpm, next(self._ids)])
        try:
            admitted, wait = await self._link.call(command)
        except asyncio.CancelledError:
            raise  # the caller left: a request counted for it stays counted, as one that was answered
        except Exception as exc:
            raise self._unshared(exc) from None
        return None if int(admitted) else max(float(wait), 0.0)

    def _unshared(self, error: Exception) -> StateUnavailable:
        """An admission (a deployment's, an API key's) Redis did not make: the backend degrades, also when
        Redis answered with an error (without the script's writes the replicas do not count together), so
        that each replica admits on its share, as when Redis is unreachable. Nothing was taken: out of
        memory, a script fails at its first write (after one, Redis lets it finish); a slot taken before
        some other error is never renewed, and expires with its lease."""
        self._failed(error, degrade=True)
        return self._unavailable()

    def _unavailable(self) -> StateUnavailable:
        return StateUnavailable(f"shared state {_SAID[self._reason or UNREACHABLE]}")

    def breaker_moved(self, deployment: Deployment, transition: Transition) -> None:
        if self.degraded:
            return
        key = self._key("open", deployment)
        if transition.to_state is BreakerState.OPEN and transition.reason != REASON_OPENED_ELSEWHERE:
            self._link.send(script_command(HOLD, [key], [self._now(), transition.open_for]))
        elif transition.reason == REASON_HEALTH_CHECK_PASSED:  # probes may go through on every replica
            self._link.send(("DEL", key))

    def put_checkpoint(self, key: str, data: bytes, ttl: float) -> None:
        if self.degraded:
            self._checkpoints.put(key, data, ttl)
        else:
            self._link.send(("SET", self._prefix + "checkpoint:" + key, data, "PX", max(math.ceil(ttl * 1000), 1)))

    async def get_checkpoint(self, key: str) -> bytes | None:
        if not self.degraded:
            try:
                data = await self._link.call(("GET", self._prefix + "checkpoint:" + key))
            except Exception as exc:
                self._failed(exc)
            else:
                if isinstance(data, bytes):
                    return data
        return self._checkpoints.get(key)  # one written while Redis was unreachable

    def stream_log(self, *, keep: int, ttl: float) -> RedisStreamLog:
        self.start()  # a replica that only serves resumptions must also notice Redis coming back
        if self._streams is None:
            self._streams = RedisStreamLog(
                self._client,
                self._link,
                prefix=self._prefix,
                keep=keep,
                ttl=ttl,
                timeout=self._timeout,
                shared=lambda: not self.degraded,
                failed=self._failed,
            )
        return self._streams

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._maintain(), name="shared-state")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._streams is not None:
            await self._streams.drain(self._timeout)
        if not self.degraded:
            await self._link.drain(self._timeout)  # the last releases, so other replicas need not wait for leases
        self._link.cancel()
        await self._client.aclose(close_connection_pool=True)

    def status(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "shared": not self.degraded,
            "degraded": self.degraded,
            "reason": self._reason,
            "replicas": self._replicas,
            "for_seconds": round(self._clock() - self._changed_at, 3),
            "leases_held": len(self._leases),
        }

    # ------------------------------------------------------------------ what the limiters ask

    def publish_pause(self, limiter: SharedLimiter, seconds: float) -> None:
        if not self.degraded:
            self._link.send(script_command(HOLD, [limiter.keys[KEY_KINDS.index("paused")]], [self._now(), seconds]))

    def settle(self, limiter: SharedLimiter, lease: str, *, free: bool, used_tokens: int | None) -> None:
        if free:
            self._leases.pop(lease, None)
        max_concurrency, _, tpm = limiter.limit_args
        free, used_tokens = free and max_concurrency > 0, used_tokens if tpm else None  # what matters there
        if self.degraded or not (free or used_tokens is not None):
            return  # (while degraded: an unrenewed lease expires by itself; a correction is lost)
        keys = [limiter.keys[KEY_KINDS.index("slots")], limiter.keys[KEY_KINDS.index("tok")]]
        used = "" if used_tokens is None else used_tokens
        self._link.send(script_command(SETTLE, keys, [lease, "1" if free else "0", used]))

    # ------------------------------------------------------------------ internals

    def _key(self, kind: str, deployment: Deployment) -> str:
        return f"{self._prefix}{kind}:{deployment.label}"

    def _now(self) -> str:
        return "" if self._server_clock is None else repr(self._server_clock())

    def _granted(self, answer: list[Any], limiters: list[SharedLimiter], tokens: int, lease: str) -> Acquired:
        taken = int(answer[0]) - 1
        acquired = Acquired()
        looked = (len(answer) - 2) // 2
        for index in range(looked):
            open_for, room = float(answer[2 + 2 * index]), float(answer[3 + 2 * index])
            limiters[index].learn(math.inf if room < 0 else room)
            if open_for > 0:
                acquired.opened_elsewhere[index] = open_for
        if taken >= 0:
            limiter = limiters[taken]
            acquired.index = taken
            acquired.permit = limiter.granted(tokens, lease)
            if limiter.limit_args[0]:
                self._leases[lease] = limiter.keys[KEY_KINDS.index("slots")]
        return acquired

    def _abandoned(self, reply: asyncio.Future[Any], limiters: list[SharedLimiter], tokens: int, lease: str) -> None:
        if reply.cancelled() or reply.exception() is not None:
            return
        permit = self._granted(reply.result(), limiters, tokens, lease).permit
        if permit is not None:
            permit.release()

    def _failed(self, error: BaseException, *, degrade: bool = False) -> None:
        """A command failed: the link is down (the backend degrades), or Redis answered it with an error,
        which is counted and warned of, and degrades the backend only when the limits need the command
        (`degrade`). Background writes are best-effort (a checkpoint, tool-call data, a stream event, a
        breaker hold, a token correction): one refused is lost, and a lease it did not free expires."""
        if link_down(error):
            self._lost(error)
            return
        kind = type(error).__name__  # never the message: it may quote the command's arguments
        self._error_replies[kind] = self._error_replies.get(kind, 0) + 1
        if degrade:
            self._lost(error)
            return
        now = self._clock()
        if now - self._error_logged_at.get(kind, -math.inf) < ERROR_LOG_SECONDS:
            return
        self._error_logged_at[kind] = now
        log.warning(
            "shared state answered a command with an error: its data is lost, limits stay shared",
            extra={"fields": {"backend": "redis", "error": kind, "error_replies": self._error_replies[kind]}},
        )

    def _lost(self, error: BaseException) -> None:
        """The limits cannot be shared (the link failed, or Redis refused their writes): degraded, or, already
        degraded, the reason follows the latest failure (a Redis that came back full, a full one whose link
        then dropped), said once when it changes."""
        reason = UNREACHABLE if link_down(error) else REFUSED
        fields: dict[str, Any] = {"backend": "redis", "error": type(error).__name__, "replicas": self._replicas}
        if self._reason is not None:
            if reason != self._reason:
                self._reason = reason
                log.warning(_LOST[reason], extra={"fields": fields})
            return
        self._reason = reason
        now = self._clock()
        shared_for, self._changed_at = now - self._changed_at, now
        if reason == UNREACHABLE:
            self._retry_at = now
        else:
            # Refused again soon after it came back (other admissions may have gone through meanwhile: a
            # deployment whose keys are fine, an API key's rpm): the wait doubles. Shared for longer: anew.
            self._refused_in_a_row = 1 if shared_for >= MAX_RETRY_SECONDS else self._refused_in_a_row + 1
            doublings = min(self._refused_in_a_row - 1, 16)  # past 2**16 retries the cap holds anyway
            wait = 0.0 if doublings == 0 else min(self._retry * 2**doublings, MAX_RETRY_SECONDS)
            self._retry_at = now + wait
            fields["refused_in_a_row"] = self._refused_in_a_row
            if wait:
                fields["retry_in_s"] = round(wait, 3)
        log.warning(_LOST[reason], extra={"fields": fields})

    def _found(self) -> None:
        reason, self._reason = self._reason, None
        self._changed_at = self._clock()
        log.info(_FOUND[reason or UNREACHABLE], extra={"fields": {"backend": "redis", "after": reason}})

    async def _maintain(self) -> None:
        """Renew leases while Redis answers; try it again while it does not."""
        loop = asyncio.get_running_loop()
        next_renewal = loop.time() + self._lease / 3
        while True:
            await asyncio.sleep(min(self._lease / 3, self._retry))
            if self.degraded:
                if await self._recover():
                    next_renewal = loop.time() + self._lease / 3
            elif loop.time() >= next_renewal:
                await self._renew()
                next_renewal = loop.time() + self._lease / 3

    async def _recover(self) -> bool:
        """Degraded: whether Redis, tried once it is time to (`_retry_at`), answers; then shared again."""
        if self._clock() < self._retry_at or not await self._answers():
            return False
        self._found()
        await self._renew()
        return True

    async def _answers(self) -> bool:
        """Whether Redis runs the admission script again (an empty admission: nothing is taken) and takes a
        write (a Redis out of memory answers the script, which then writes nothing, but would refuse the
        next admission: the backend would come back only to degrade again), on a new connection: those
        made before the outage may be dead, and would cut the next burst short."""
        try:
            await self._client.connection_pool.disconnect()
            await self._link.call(script_command(ACQUIRE, [], [self._now(), 0, "", self._lease]))
            await self._link.call(("SET", self._prefix + "probe", "1", "PX", max(math.ceil(self._retry * 1000), 1)))
        except Exception as exc:
            self._lost(exc)  # the reason may have changed
            return False
        return True

    async def _renew(self) -> None:
        if not self._leases:
            return
        leases = list(self._leases.items())
        args = [self._now(), self._lease, *(lease for lease, _ in leases)]
        try:
            await self._link.call(script_command(RENEW, [key for _, key in leases], args))
        except Exception as exc:
            self._failed(exc, degrade=True)  # a lease not renewed is reclaimed: this replica's share then
