"""Every PostgreSQL advisory-lock key reconcile takes, in one registry.

Advisory locks form one key space per database, shared with every other program that uses the
database: two purposes on one key would wait on each other, and a liveness check reading
``pg_locks`` would take one purpose's holder for the other's. So no module writes a key literal;
``store.migrating``, ``store.applying``, ``store.ledger`` and ``store.liveness`` take theirs from
here. Every key is a signed 64-bit ``bigint`` (``pg_advisory_lock(bigint)``).

- A lock that exists once per database (migrating, applying, ...) is a member of ``Fixed``. Its
  value lies in the range reserved for reconcile, ``0x7265636F6E00`` to ``0x7265636F6EFF`` (the
  ASCII bytes of "recon" and a number). To add one, add a member with the next free number;
  ``enum.unique`` refuses a number used twice when the module is imported.
- A lock per named object (one per schedule, ...) comes from ``named_key(Named.X, name)``: a
  64-bit hash of the purpose and the name, steered out of the reserved range, so it never equals a
  fixed key and two purposes never share a key for one name. To add one, add a member to ``Named``.

Existing values never change: during a rolling upgrade a replica of the previous version must
still take the same lock as the new one.

``lock_holder`` says which backend holds a session lock (``pg_locks``): ``store.daemon_state``
asks it of a frozen leader's lock.
"""

from __future__ import annotations

import enum
import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["RESERVED_RANGE", "Fixed", "Named", "lock_holder", "named_key"]

_PREFIX = 0x7265636F6E  # b"recon"
RESERVED_RANGE = range(_PREFIX << 8, (_PREFIX + 1) << 8)


@enum.unique
class Fixed(enum.IntEnum):
    """The locks taken once per database; each value is the key itself."""

    MIGRATION = (_PREFIX << 8) | 0x01  # store.migrating: one schema migration at a time
    APPLY = (_PREFIX << 8) | 0x02  # store.applying: one apply at a time
    LEDGER_CREATE = (_PREFIX << 8) | 0x03  # store.ledger: CREATE TABLE IF NOT EXISTS is racy


@enum.unique
class Named(enum.StrEnum):
    """The purposes of per-name locks; the value is part of the hashed text."""

    JOB = "job"  # store.liveness: held by the session running a schedule's import
    CLAIM = "claim"  # jobs: held while a runner decides run or skip for a schedule
    LEADER = "leader"  # daemon.leading: per owner, held by the replica that watches and applies


def named_key(purpose: Named, name: str) -> int:
    """The key of ``purpose``'s lock for ``name``: stable across hosts and versions."""
    text = f"reconcile.{purpose.value}:{name}".encode()
    key = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)
    return _outside_reserved(key)


def _outside_reserved(key: int) -> int:
    # One hash in 2**56 lands in the reserved range; flipping a bit of the prefix moves it out.
    return key ^ (1 << 40) if key in RESERVED_RANGE else key


def lock_holder(conn: psycopg.Connection[Any], key: int) -> int | None:
    """The backend pid holding the session advisory lock ``key`` in this database, if any."""
    # pg_locks shows a bigint key as two oids: its high and low 32 bits, with objsubid 1.
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchone()
    return int(row[0]) if row else None
