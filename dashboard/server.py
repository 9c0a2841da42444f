"""Wiring of one ``haul web`` process: database, consumer thread, app, uvicorn.

Each replica runs the same: it migrates the schema (under a lock on PostgreSQL), consumes the
stream as one consumer of the shared group, and serves pages from the shared database.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from redis import Redis
from sqlalchemy import Engine

from dashboard.app import WebContext, create_app
from dashboard.auth import Guard, check_bind
from dashboard.consumer import Consumer
from dashboard.db import make_engine, migrate
from dashboard.health import HealthProbe
from dashboard.metrics import WebCollector, queue_depths, registry
from dashboard.projector import Projector
from dashboard.queries import Queries
from worker.settings import Settings

log = logging.getLogger(__name__)
_REDIS_TIMEOUT_S = 5.0


@dataclass
class WebServer:
    app: FastAPI
    engine: Engine
    consumer: Consumer
    host: str
    port: int
    stop: threading.Event

    def start_consumer(self) -> threading.Thread:
        thread = threading.Thread(
            target=self.consumer.run, args=(self.stop,), name="haul-web-consumer", daemon=True
        )
        thread.start()
        return thread

    def serve(self) -> None:
        thread = self.start_consumer()
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, access_log=False, log_config=None
        )
        try:
            uvicorn.Server(config).run()
        finally:
            self.stop.set()
            thread.join(timeout=10)
            self.engine.dispose()


def build(settings: Settings, bind: str | None = None) -> WebServer:
    """Everything ``haul web`` runs, from the settings; refuses an open bind without a token."""
    host, port = check_bind(bind or settings.web_bind, settings.web_token)
    engine = make_engine(settings.effective_web_database_url)
    migrate(engine)
    events = Redis.from_url(
        settings.redis_url,
        socket_timeout=_REDIS_TIMEOUT_S,
        socket_connect_timeout=_REDIS_TIMEOUT_S,
        health_check_interval=30,
    )
    broker_url = settings.effective_broker_url
    depths = queue_depths(broker_url, events if broker_url == settings.redis_url else None)
    queries = Queries(engine)
    consumer = Consumer(
        events, Projector(engine), settings.events_stream, settings.web_consumer_group
    )
    probe = HealthProbe(events, settings.events_stream, settings.web_consumer_group, queries)
    ctx = WebContext(
        queries=queries,
        guard=Guard(settings.web_token),
        health=probe.health,
        registry=registry(WebCollector(depths, probe.lag)),
    )
    return WebServer(create_app(ctx), engine, consumer, host, port, threading.Event())
