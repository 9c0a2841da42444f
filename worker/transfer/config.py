"""Transfer tuning, validated once (it comes from :class:`worker.settings.Settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.retry import RetryPolicy
from worker.settings import Settings

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferConfig:
    chunk_size_bytes: int = 8 * MiB
    concurrency: int = 4
    multipart_threshold_bytes: int = 16 * MiB
    files_in_flight: int = 64
    max_attempts: int = 5
    progress_interval_s: float = 5.0
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0
    retry_budget_s: float = 60.0
    #: whole small objects of a batch on one thread where the source can (HTTP); off for tests
    small_lane: bool = True
    #: replaces the policy built from the numbers above (tests give a fake clock and sleep)
    retry: RetryPolicy | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.chunk_size_bytes < 64 * 1024:
            raise ValueError("chunk_size_bytes must be at least 64 KiB")
        if self.concurrency < 1 or self.files_in_flight < 1 or self.max_attempts < 1:
            raise ValueError("concurrency, files_in_flight and max_attempts must be >= 1")
        self.policy  # noqa: B018 (validates the retry numbers now, at start)

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy of every store call: ``retry`` when given, else from the numbers."""
        if self.retry is not None:
            return self.retry
        return RetryPolicy(
            max_attempts=self.max_attempts,
            budget_s=self.retry_budget_s,
            base_s=self.backoff_base_s,
            max_backoff_s=self.backoff_max_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> TransferConfig:
        return cls(
            chunk_size_bytes=settings.chunk_size_bytes,
            concurrency=settings.concurrency,
            multipart_threshold_bytes=settings.multipart_threshold_bytes,
            files_in_flight=settings.files_in_flight,
            max_attempts=settings.max_attempts,
            retry_budget_s=settings.retry_budget_s,
            progress_interval_s=settings.progress_interval_s,
        )
