"""Leases: which control-plane replica acts for a session, on PostgreSQL.

Theory of operation
-------------------
Every session has one row in ``leases``: the owning replica's id (or NULL), the wall-clock time
its lease expires (seconds since the epoch, as the other timestamps) and an ``epoch`` that grows
by one at every claim (a fencing token: whoever reads epoch 7 knows that a replica holding 6 has
lost the session). A replica:

* **claims** sessions whose lease is unowned or expired, ``FOR UPDATE SKIP LOCKED``: two replicas
  claiming at once never wait for each other and never both get one session, since a row the
  other is claiming is skipped, not waited for (the design's "SKIP LOCKED deadline claims");
* **renews** the leases it holds before they expire; a lease that expired is not renewed, even if
  nobody claimed it yet: the replica must notice it lost the session (it may have been stopped
  past its lease and resumed) and claim it again, which bumps the epoch;
* **releases** its leases when it stops cleanly, so another replica need not wait for expiry;
* is **fenced**: ``PostgresStore`` given a ``replica`` id checks, in the same transaction as
  every write for a session, that the lease is still its own and unexpired, and holds the lease
  row ``FOR SHARE`` until the commit. A claim takes the row ``FOR UPDATE``, so the check and a
  claim serialize: once another replica's claim committed, every later write of the old owner is
  refused (``LeaseLostError``), and no write of the old owner commits after a claim that
  overlapped it. Two replicas never both write for one session.

Wall-clock time enters here and only here (the engine's clocks stay monotonic). Expiry compares
with ``now``: the database's ``clock_timestamp()`` by default, one clock every replica shares, so
their own clocks' skew does not matter; or a time passed in (the store's ``clock``, or ``now=``
on each call), which is how the tests move time without sleeping.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "CLAIM",
    "CLAIM_ONE",
    "FENCE",
    "FENCE_AND_LAST_EVENT",
    "HELD",
    "LEASE",
    "NOW",
    "RELEASE",
    "RENEW",
    "RENEW_ALL",
    "Lease",
]


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """One session's lease as stored."""

    session_id: str
    owner: str | None
    """The replica id acting for the session; None when nobody holds it."""
    expires_at: float
    """Seconds since the epoch (wall clock); the lease is lost at and after this time."""
    epoch: int
    """Grows by one at every claim: a fencing token a replica can compare with its own."""


NOW = "COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"
"""The time leases compare with: the one passed in, else the database's wall clock."""

# Oldest expiry first, so that a session that lost its owner longest ago is taken first; unowned
# rows carry expires_at 0 (never claimed) or their last expiry (released).
CLAIM = f"""
WITH candidates AS (
    SELECT l.session_id FROM leases AS l JOIN sessions AS s ON s.id = l.session_id
    WHERE NOT s.deleted AND (l.owner IS NULL OR l.expires_at <= {NOW})
    ORDER BY l.expires_at, l.session_id
    LIMIT %(limit)s
    FOR UPDATE OF l SKIP LOCKED
)
UPDATE leases SET owner = %(owner)s, expires_at = {NOW} + %(ttl)s, epoch = leases.epoch + 1
FROM candidates WHERE leases.session_id = candidates.session_id
RETURNING leases.session_id, leases.owner, leases.expires_at, leases.epoch
"""

CLAIM_ONE = f"""
UPDATE leases SET owner = %(owner)s, expires_at = {NOW} + %(ttl)s, epoch = leases.epoch + 1
FROM sessions AS s
WHERE leases.session_id = %(id)s AND s.id = leases.session_id AND NOT s.deleted
    AND (leases.owner IS NULL OR leases.expires_at <= {NOW})
RETURNING leases.session_id, leases.owner, leases.expires_at, leases.epoch
"""
"""One named session, if its lease is free or expired: a wrapper or a client that reached this
replica for a session nobody holds. The UPDATE's row lock serializes with ``CLAIM``'s ``FOR
UPDATE``; whichever commits second re-reads the row and finds it taken."""

RENEW = f"""
UPDATE leases SET expires_at = {NOW} + %(ttl)s
WHERE owner = %(owner)s AND expires_at > {NOW} AND session_id = ANY(%(ids)s)
RETURNING session_id, owner, expires_at, epoch
"""

RENEW_ALL = f"""
UPDATE leases SET expires_at = {NOW} + %(ttl)s
WHERE owner = %(owner)s AND expires_at > {NOW}
RETURNING session_id, owner, expires_at, epoch
"""

RELEASE = """
UPDATE leases SET owner = NULL WHERE owner = %(owner)s AND session_id = ANY(%(ids)s)
RETURNING session_id
"""

LEASE = "SELECT session_id, owner, expires_at, epoch FROM leases WHERE session_id = %(id)s"

HELD = f"""
SELECT session_id, owner, expires_at, epoch FROM leases
WHERE owner IS NOT NULL AND expires_at > {NOW} ORDER BY session_id
"""

FENCE = f"""
SELECT owner, expires_at, {NOW} FROM leases WHERE session_id = %(id)s FOR SHARE
"""
"""Taken by every fenced write: the lease row, held until the write's transaction ends."""

FENCE_AND_LAST_EVENT = f"""
WITH fence AS MATERIALIZED (
    SELECT true AS present, owner, expires_at, {NOW} AS now FROM leases
    WHERE session_id = %(id)s FOR SHARE
)
SELECT (SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = s.id),
    f.present, f.owner, f.expires_at, f.now
FROM sessions AS s LEFT JOIN fence AS f ON true
WHERE s.id = %(id)s FOR UPDATE OF s
"""
"""``FENCE`` and an append's first statement in one round trip: the session's last event id
with its row ``FOR UPDATE`` (appends to one session serialize) and the lease row ``FOR SHARE``
(``present`` NULL: the session has no lease row). The lease row is locked first, as when the
fence is a statement of its own: the CTE is scanned before the session row is locked above the
join. No row at all: no such session."""


def lease_of(row: tuple[object, ...]) -> Lease:
    session_id, owner, expires_at, epoch = row
    assert isinstance(session_id, str) and (owner is None or isinstance(owner, str))
    assert isinstance(expires_at, float) and isinstance(epoch, int)
    return Lease(session_id=session_id, owner=owner, expires_at=expires_at, epoch=epoch)
