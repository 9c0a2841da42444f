"""How far behind the events the read model is, for ``/api/health`` and ``/metrics``."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError

from dashboard import views as v
from dashboard.queries import Queries


class HealthProbe:
    def __init__(
        self,
        client: Redis,  # type: ignore[type-arg]
        stream: str,
        group: str,
        queries: Queries,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.queries = queries

    def lag(self) -> int | None:
        """Events not yet projected: not yet delivered to the group, plus delivered but not
        acknowledged. None when Redis cannot be asked."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(self.stream)
            pipe.xlen(self.stream)
            exists, length = pipe.execute()
            if not exists:
                return 0
            groups = self.client.xinfo_groups(self.stream)  # type: ignore[no-untyped-call]
        except RedisError:
            return None
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == self.group:
                lag = g.get("lag")
                return int(g["pending"]) + (int(lag) if lag is not None else int(length))
        return int(length)  # the group does not exist yet: everything is unread

    def health(self) -> v.Health:
        lag = self.lag()
        gap = self.queries.incomplete_before()
        status: str = "redis_unavailable" if lag is None else "incomplete" if gap else "ok"
        return v.Health.model_validate(
            {
                "status": status,
                "lag_events": lag,
                "last_event_time": self.queries.last_event_time(),
                "incomplete_before": gap,
                "redis": lag is not None,
            }
        )
