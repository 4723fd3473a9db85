"""ORM classes only: the shape of what creditwatch stores."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Double, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigId, UTCDateTime
from worker.settings_base import DEFAULT_ACCOUNT


class ReadingRow(Base):
    """One successful fetch of the balance."""

    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No index of its own: with a few accounts, a fetched_at range holds a few times the rows.
    account: Mapped[str] = mapped_column(String(64), default=DEFAULT_ACCOUNT, server_default=DEFAULT_ACCOUNT)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    total_credits: Mapped[float] = mapped_column(Double)
    total_usage: Mapped[float] = mapped_column(Double)
    # Bumped when the wall clock steps back: readings of different timelines must not
    # share a slope (their timestamps interleave and would count spend twice). No index
    # of its own: it filters the rows of a fetched_at range, which bounds the cost.
    timeline: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class FetchAttemptRow(Base):
    """Every fetch, ok or failed; `streak` is the failure run including this row."""

    __tablename__ = "fetch_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64), default=DEFAULT_ACCOUNT, server_default=DEFAULT_ACCOUNT)
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # no index: retention walks `id`
    kind: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(String(500))
    streak: Mapped[int] = mapped_column(Integer, default=0)
    streak_auth: Mapped[bool] = mapped_column(Boolean, default=False)


class AlertStateRow(Base):
    """Where each alert stands (a rule's, per account, per key for per-key rules), so restarts
    never repeat a notification early. Inactive alerts without history are never stored."""

    __tablename__ = "alert_states"

    account: Mapped[str] = mapped_column(String(64), primary_key=True, server_default=DEFAULT_ACCOUNT)
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The key's id for a per-key rule, "" for a rule of the whole account.
    key: Mapped[str] = mapped_column(String(32), primary_key=True, server_default="")
    key_name: Mapped[str] = mapped_column(String(300), default="", server_default="")
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    firing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    period: Mapped[int] = mapped_column(Integer, default=0)
    repeats: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[str] = mapped_column(String(500), default="")
    # A message of this alert was held back (silenced or inhibited): when that ends while
    # the alert still fires, a reminder goes out at once.
    # "" nothing held back; "first": its first message was (announce it once it may be);
    # "repeat": a reminder was (send one once it may be).
    muted: Mapped[str] = mapped_column(String(16), default="", server_default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxRow(Base):
    """A notification for one channel: pending until the channel accepts it."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("key", "channel"),
        Index("ix_outbox_status_channel_id", "status", "channel", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    account: Mapped[str] = mapped_column(String(64), default=DEFAULT_ACCOUNT, server_default=DEFAULT_ACCOUNT)
    rule: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    notify_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Who holds the claim: "host:pid:start", so a claim of a process that died on this
    # host is taken over at once instead of after the lease.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    # Backoff: a failed row is not tried again before this time.
    next_try_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Given up (give_up_after passed, or its channel left the settings): never sent.
    dropped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # A PNG sent along where the channel takes attachments (the digest's chart).
    attachment: Mapped[bytes | None] = mapped_column(LargeBinary)


class RollupRow(Base):
    """One hour of readings older than keep_raw: first, last, min and max of each series."""

    __tablename__ = "rollups"

    account: Mapped[str] = mapped_column(String(64), primary_key=True, default=DEFAULT_ACCOUNT,
                                         server_default=DEFAULT_ACCOUNT)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    credits_first: Mapped[float] = mapped_column(Double)
    credits_last: Mapped[float] = mapped_column(Double)
    credits_min: Mapped[float] = mapped_column(Double)
    credits_max: Mapped[float] = mapped_column(Double)
    usage_first: Mapped[float] = mapped_column(Double)
    usage_last: Mapped[float] = mapped_column(Double)
    usage_min: Mapped[float] = mapped_column(Double)
    usage_max: Mapped[float] = mapped_column(Double)


class ApiKeyRow(Base):
    """An account's API key as last read from GET /keys (one row a key, updated on change).
    `key_id` is a digest of the key's hash: the hash itself is never stored."""

    __tablename__ = "api_keys"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(100))
    limit: Mapped[float | None] = mapped_column(Double)
    limit_remaining: Mapped[float | None] = mapped_column(Double)
    limit_reset: Mapped[str | None] = mapped_column(String(32))
    usage: Mapped[float] = mapped_column(Double)
    usage_daily: Mapped[float] = mapped_column(Double)
    usage_weekly: Mapped[float] = mapped_column(Double)
    usage_monthly: Mapped[float] = mapped_column(Double)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the last tick that listed it


class KeyReadingRow(Base):
    """A key's figures at a tick where they changed (or an hour after the last such row):
    its history, pruned after keep_raw like the balance's raw readings."""

    __tablename__ = "key_readings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    limit: Mapped[float | None] = mapped_column(Double)
    limit_remaining: Mapped[float | None] = mapped_column(Double)
    usage: Mapped[float] = mapped_column(Double)
    usage_daily: Mapped[float] = mapped_column(Double)
    usage_weekly: Mapped[float] = mapped_column(Double)
    usage_monthly: Mapped[float] = mapped_column(Double)


class SilenceRow(Base):
    """`creditwatch silence add`: a rule's messages held back from `starts_at` to `ends_at`,
    for one account or (account NULL) all of them."""

    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(64))
    account: Mapped[str | None] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    comment: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DigestRow(Base):
    """A digest period whose message was queued: each period's digest is queued once."""

    __tablename__ = "digests"

    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LeaseRow(Base):
    """The leader lease (one row, name "leader"): which `run` replica leads, under which
    fencing epoch (it only grows), and until when by the database's clock."""

    __tablename__ = "leader_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))  # "host:pid:start", as worker.procs
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
