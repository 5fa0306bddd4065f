"""Advisory-lock keys: one registry, every key distinct, and no purpose waits on another's lock."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import TargetError
from reconciler.store import applying, ledger, migrating
from reconciler.store.jobs import job_lock_key
from reconciler.store.locks import RESERVED_RANGE, Fixed, Named, _outside_reserved, named_key


def test_every_module_takes_a_distinct_fixed_key() -> None:
    """The migration, apply and ledger-creation locks are three different registry keys."""
    used = [migrating.MIGRATION_LOCK, applying.APPLY_LOCK, ledger._CREATE_LOCK]
    assert len(set(used)) == len(used)
    assert set(used) <= set(Fixed)


def test_fixed_keys_are_unique_and_reserved() -> None:
    """Every fixed key is used once and lies in reconcile's reserved range."""
    values = [member.value for member in Fixed]
    assert len(set(values)) == len(values)
    assert all(value in RESERVED_RANGE for value in values)


@given(purpose=st.sampled_from(Named), name=st.text())
def test_named_keys_are_signed_64_bit_and_never_fixed(purpose: Named, name: str) -> None:
    """A per-name key fits a bigint and never lands in the fixed keys' range."""
    key = named_key(purpose, name)
    assert -(2**63) <= key < 2**63
    assert key not in RESERVED_RANGE


@pytest.mark.parametrize("key", [RESERVED_RANGE.start, *Fixed, RESERVED_RANGE.stop - 1])
def test_a_hash_in_the_reserved_range_is_steered_out(key: int) -> None:
    """The one-in-2**56 hash that would equal a fixed key is moved out of the range."""
    assert _outside_reserved(key) not in RESERVED_RANGE
    assert _outside_reserved(key) not in set(Fixed)


def test_job_keys_are_unchanged() -> None:
    """A job's key is the one earlier versions took, so replicas of both exclude each other."""
    name = "daily-sales-import"
    digest = hashlib.blake2b(f"reconcile.job:{name}".encode(), digest_size=8).digest()
    assert job_lock_key(name) == int.from_bytes(digest, "big", signed=True)


def test_an_apply_does_not_block_creating_a_ledger(database_url: str) -> None:
    """A session holding the apply lock does not hold up an import creating its ledger table."""
    with psycopg.connect(database_url) as applier, psycopg.connect(database_url) as importer:
        applier.execute("SELECT pg_advisory_xact_lock(%s)", (applying.APPLY_LOCK,))
        importer.execute("SET lock_timeout = '2s'")
        importer.commit()
        book = ledger.Ledger(project_id="p", project="p", source="local", external=True)
        try:
            book.prepare(importer)
        except TargetError as exc:  # the lock wait timed out: the keys are shared
            pytest.fail(f"the ledger waited for the apply lock: {exc}")
        row = importer.execute("SELECT to_regclass(%s)", (ledger.EXTERNAL_LEDGER,)).fetchone()
        assert row is not None
        assert row[0] is not None
