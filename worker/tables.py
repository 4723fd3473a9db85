"""ORM classes only: the shape of what creditwatch stores."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Double, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db import Base, BigId, UTCDateTime


class ReadingRow(Base):
    """One successful fetch of the balance."""

    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
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
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(String(500))
    streak: Mapped[int] = mapped_column(Integer, default=0)
    streak_auth: Mapped[bool] = mapped_column(Boolean, default=False)


class AlertStateRow(Base):
    """Where each rule's alert stands, so restarts never repeat a notification early."""

    __tablename__ = "alert_states"

    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    firing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    period: Mapped[int] = mapped_column(Integer, default=0)
    repeats: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[str] = mapped_column(String(500), default="")
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


class RollupRow(Base):
    """One hour of readings older than keep_raw: first, last, min and max of each series."""

    __tablename__ = "rollups"

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
