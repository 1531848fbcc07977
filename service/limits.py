"""Per-key and per-tenant usage limits: what a key or tenant may use each minute and at once.

A key's limits are its own (`ApiKey.limits`, on the Principal); a tenant's (`Tenant.limits`) are
shared by all its keys. `RateLimiter` enforces both on the inference routes that cost engine time.

Where the state lives: in this gateway process's memory, nothing shared. With N gateway replicas
each one enforces every limit on its own share of the traffic, so a key may use up to N times its
limit in all (spread the load evenly, or divide the limits by N). A restart forgets what was used.

How each limit is counted:
- requests_per_minute and tokens_per_minute are token buckets that hold a minute's allowance and
  refill continuously (limit / 60 per second). A bucket, unlike a fixed or sliding 60 s window,
  needs no per-request history, has no edge where two minutes' allowances meet, and gives an
  exact Retry-After: the time until it holds one unit again. A new (or idle) key may spend its
  whole minute's allowance at once, then one unit per 60 / limit seconds.
- requests_per_minute: a request is refused when the bucket holds less than one request, else
  charged one when it starts.
- tokens_per_minute (generated tokens): the count is known only once a request ends, so a request
  is refused when the bucket is already empty (less than one token), and what it generated is
  charged when it ends, which may take the bucket below zero: the next requests wait until it
  has refilled.
- concurrent: requests in flight, counted up when a request is admitted and down when it ends
  (in a `finally`: also when the client goes away or a stream is cancelled).

A request is refused (RateLimited, 429 with Retry-After) when any of its key's or its tenant's
limits says so; then nothing is charged. Bootstrap keys and open mode (key_id None) have no limits
of their own, only their tenant's, if any.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from adapters_store.errors import RateLimited
from adapters_store.models import Tenant
from service.auth import Principal

log = logging.getLogger(__name__)

TENANT_CACHE_S = 5.0  # a tenant's changed limits apply within this long, with no database read per request
GLOBAL = ""  # the `tenant` label of global keys, bootstrap keys and open mode in /metrics (no tenant name is empty)
KINDS = ("concurrent", "requests_per_minute", "tokens_per_minute")


class Limits(BaseModel):
    """Unset fields do not limit. A key's limits apply to it alone; a tenant's to all its keys together."""
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=1_000_000_000)  # generated tokens
    concurrent: int | None = Field(default=None, ge=1, le=100_000)  # requests in flight at once


def narrow(maker: dict | None, requested: dict | None) -> dict | None:
    """The limits of a key a key makes: what was asked, each at most its maker's (an unset limit of
    the maker's leaves the field as asked; a field left unset takes the maker's), as filters are
    narrowed. A key can never mint one that may do more than itself."""
    if not maker:
        return requested
    narrowed = dict(requested or {})
    for kind, ceiling in maker.items():
        if ceiling is not None:
            narrowed[kind] = min(ceiling, narrowed.get(kind) or ceiling)
    return narrowed


def tenant_limits_loader(sessions) -> Callable[[str], dict | None]:
    """Reads a tenant's stored limits (None: no row, or no limits) with a session of `sessions`."""
    def load(tenant: str) -> dict | None:
        with sessions() as session:
            return session.scalar(select(Tenant.limits).where(Tenant.name == tenant))
    return load


@dataclass
class _Bucket:
    level: float  # units available now; negative once tokens were charged past the allowance
    stamp: float  # when `level` was last brought up to date

    def refill(self, per_minute: int, now: float) -> None:
        self.level = min(float(per_minute), self.level + max(0.0, now - self.stamp) * per_minute / 60.0)
        self.stamp = now

    def wait_s(self, per_minute: int) -> int:
        """Whole seconds until the bucket holds one unit again, at least 1."""
        return max(1, math.ceil((1.0 - self.level) * 60.0 / per_minute - 1e-9))


@dataclass(frozen=True)
class _Holder:
    """Whose limits: ("key", key id) or ("tenant", name)."""
    whose: str
    ident: int | str

    def describe(self) -> str:
        return f"key {self.ident}" if self.whose == "key" else f"tenant {self.ident!r}"


@dataclass
class Admission:
    """One admitted request: `charge` its generated tokens, `release` it when it ends (once; later
    calls do nothing). As an async context manager it is admitted on entry and released on exit,
    unless `detach`ed: then whoever took it over (a stream's relay) releases it."""
    limiter: "RateLimiter"
    principal: Principal
    holders: list[tuple[_Holder, Limits]] = field(default_factory=list)
    tokens: int = 0
    admitted: bool = False
    released: bool = False
    detached: bool = False

    async def __aenter__(self) -> "Admission":
        await self.limiter._admit(self)
        return self

    async def __aexit__(self, *_exc) -> None:
        if not self.detached:
            self.release()

    def detach(self) -> "Admission":
        """Leave the release to the caller (the context's exit will not release it)."""
        self.detached = True
        return self

    def charge(self, tokens: int) -> None:
        """Count generated tokens; they are taken from the buckets on release."""
        self.tokens += max(0, int(tokens or 0))

    def release(self) -> None:
        if self.admitted and not self.released:
            self.released = True
            self.limiter._release(self)


class StreamTokens:
    """The tokens a stream generated, from its events: the last `usage.completion_tokens` an event
    carried (vLLM's is cumulative, sent with stream_options), else one per event with text."""

    def __init__(self) -> None:
        self.events_with_text = 0
        self.reported: int | None = None

    def see(self, event: dict) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.reported = usage["completion_tokens"]
        for choice in event.get("choices") or ():
            if (choice.get("delta") or {}).get("content") or choice.get("text"):
                self.events_with_text += 1
                break

    @property
    def total(self) -> int:
        return self.reported if self.reported is not None else self.events_with_text


class RateLimiter:
    """Enforces keys' and tenants' limits in this process (see the module's docstring).

    `tenant_limits(name)` reads a tenant's stored limits (a blocking call, run in a thread); each
    tenant's answer is kept `tenant_cache_s` seconds. `clock` is monotonic seconds (tests pass a
    fake one). `metrics`, if given, counts refusals, in-flight requests and generated tokens per tenant.
    """

    def __init__(self, tenant_limits: Callable[[str], dict | None] | None = None, *, metrics=None,
                 clock: Callable[[], float] = time.monotonic, tenant_cache_s: float = TENANT_CACHE_S):
        self._tenant_limits = tenant_limits
        self._metrics = metrics
        self._clock = clock
        self._cache_s = tenant_cache_s
        self._tenant_cache: dict[str, tuple[Limits | None, float]] = {}
        self._buckets: dict[tuple[_Holder, str], _Bucket] = {}
        self._in_flight: dict[_Holder, int] = {}

    def admit(self, principal: Principal) -> Admission:
        """`async with limiter.admit(principal) as admission:` raises RateLimited when a limit says no."""
        return Admission(self, principal)

    async def count_request(self, principal: Principal) -> None:
        """Check and charge requests_per_minute only (for cheap routes that take no engine time)."""
        holders = await self._holders(principal)
        now = self._clock()
        self._refuse_if_over(principal, holders, now, kinds=("requests_per_minute",))
        self._take_requests(holders, now)

    def in_flight(self, whose: str, ident: int | str) -> int:
        """Requests in flight of a key (id) or a tenant (name)."""
        return self._in_flight.get(_Holder(whose, ident), 0)

    # What follows has no await between checking and charging: one event loop, so no other
    # request can slip in between.

    async def _admit(self, admission: Admission) -> None:
        principal = admission.principal
        admission.holders = await self._holders(principal)
        now = self._clock()
        self._refuse_if_over(principal, admission.holders, now, kinds=KINDS)
        self._take_requests(admission.holders, now)
        for holder in self._counted(principal):
            self._in_flight[holder] = self._in_flight.get(holder, 0) + 1
        admission.admitted = True
        if self._metrics is not None:
            self._metrics.in_flight.labels(tenant_label(principal)).inc()

    def _release(self, admission: Admission) -> None:
        principal = admission.principal
        for holder in self._counted(principal):
            left = self._in_flight.get(holder, 0) - 1
            if left > 0:
                self._in_flight[holder] = left
            else:
                self._in_flight.pop(holder, None)
        now = self._clock()
        for holder, limits in admission.holders:
            if limits.tokens_per_minute is not None and admission.tokens:
                bucket = self._bucket(holder, "tokens_per_minute", limits.tokens_per_minute, now)
                bucket.level -= admission.tokens
        if self._metrics is not None:
            self._metrics.in_flight.labels(tenant_label(principal)).dec()
            self._metrics.generated_tokens.labels(tenant_label(principal)).inc(admission.tokens)

    @staticmethod
    def _counted(principal: Principal) -> list[_Holder]:
        """Whose in-flight counts a request adds to (whether or not they have a limit now, so that a
        limit set later counts the requests already running)."""
        holders = []
        if principal.key_id is not None:
            holders.append(_Holder("key", principal.key_id))
        if principal.tenant is not None:
            holders.append(_Holder("tenant", principal.tenant))
        return holders

    async def _holders(self, principal: Principal) -> list[tuple[_Holder, Limits]]:
        """The limits that apply to the principal's requests: its key's, then its tenant's."""
        holders = []
        if principal.key_id is not None and principal.limits:
            holders.append((_Holder("key", principal.key_id), Limits.model_validate(principal.limits)))
        if principal.tenant is not None:
            limits = await self._limits_of_tenant(principal.tenant)
            if limits is not None:
                holders.append((_Holder("tenant", principal.tenant), limits))
        return holders

    async def _limits_of_tenant(self, tenant: str) -> Limits | None:
        if self._tenant_limits is None:
            return None
        cached = self._tenant_cache.get(tenant)
        if cached is not None and self._clock() - cached[1] < self._cache_s:
            return cached[0]
        try:
            stored = await asyncio.to_thread(self._tenant_limits, tenant)
        except Exception:
            if cached is None:
                raise
            log.warning("could not read tenant %r's limits; keeping the last ones read", tenant, exc_info=True)
            return cached[0]
        limits = Limits.model_validate(stored) if stored else None
        if limits is not None and limits == Limits():
            limits = None
        self._tenant_cache[tenant] = (limits, self._clock())
        return limits

    def _bucket(self, holder: _Holder, kind: str, per_minute: int, now: float) -> _Bucket:
        bucket = self._buckets.get((holder, kind))
        if bucket is None:
            bucket = self._buckets[(holder, kind)] = _Bucket(float(per_minute), now)
        bucket.refill(per_minute, now)
        return bucket

    def _refuse_if_over(self, principal: Principal, holders: list[tuple[_Holder, Limits]], now: float,
                        kinds: tuple[str, ...]) -> None:
        for holder, limits in holders:
            for kind in kinds:
                limit = getattr(limits, kind)
                if limit is None:
                    continue
                if kind == "concurrent":
                    if self._in_flight.get(holder, 0) < limit:
                        continue
                    wait_s = 1  # when one ends is not known: try again soon
                    what = f"{limit} concurrent request{'s' if limit != 1 else ''}"
                else:
                    bucket = self._bucket(holder, kind, limit, now)
                    if bucket.level >= 1.0:
                        continue
                    wait_s = bucket.wait_s(limit)
                    what = f"{limit} {'requests' if kind == 'requests_per_minute' else 'generated tokens'} per minute"
                if self._metrics is not None:
                    self._metrics.rate_limited.labels(tenant_label(principal), kind, holder.whose).inc()
                raise RateLimited(f"rate limit reached: {holder.describe()} allows {what}; "
                                  f"retry after {wait_s} s", code="rate_limit_exceeded", retry_after_s=wait_s)

    def _take_requests(self, holders: list[tuple[_Holder, Limits]], now: float) -> None:
        for holder, limits in holders:
            if limits.requests_per_minute is not None:
                self._bucket(holder, "requests_per_minute", limits.requests_per_minute, now).level -= 1.0


def tenant_label(principal: Principal | None) -> str:
    """The `tenant` label of a principal's requests in /metrics: its tenant, or GLOBAL ("")."""
    tenant = getattr(principal, "tenant", None)
    return tenant if tenant is not None else GLOBAL
