"""Graceful shutdown: on SIGTERM (or SIGINT) stop taking requests (503), let running ones finish for up
to `shutdown_timeout` seconds, then stop the server; the process exits 0."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from .engine_client import EngineClient

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, client: EngineClient, shutdown_timeout: float):
        super().__init__(config)
        self.client = client
        self.shutdown_timeout = shutdown_timeout
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.client.drain()
        logger.info(
            "draining: %d requests in flight, waiting up to %.0f s",
            self.client.in_flight,
            self.shutdown_timeout,
        )
        threading.Thread(target=self._finish_drain, name="loraplex-drain", daemon=True).start()

    def _finish_drain(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while self.client.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.client.in_flight:
            logger.warning("shutdown timeout: %d requests still running are cut off", self.client.in_flight)
        self.should_exit = True
