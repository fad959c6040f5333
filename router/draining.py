"""Graceful shutdown: on SIGTERM (or SIGINT) stop taking requests (503), let running ones finish for up
to `shutdown_timeout` seconds, then stop the server, cutting off what still runs; a second signal stops
it at once. The process exits 0 either way."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from .engine_client import EngineClient

logger = logging.getLogger(__name__)
CUT_OFF_GRACE_S = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, client: EngineClient, shutdown_timeout: float):
        super().__init__(config)
        self.client = client
        self.shutdown_timeout = shutdown_timeout
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        # uvicorn's own handler is not called: it would re-raise the signal at exit (status 143, or a
        # KeyboardInterrupt for SIGINT) and wait for open streams without limit.
        if self._draining:
            logger.warning("second signal: stopping now, %d requests cut off", self.client.in_flight)
            # off the event loop's thread, which must stay free to send the requests' last events
            threading.Thread(target=self._stop_now, name="loraplex-stop", daemon=True).start()
            return
        self._draining = True
        self.client.drain()
        logger.info(
            "draining: %d requests in flight, waiting up to %g s",
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
            self._stop_now()
        self.should_exit = True

    def _stop_now(self) -> None:
        """End every running request (each gets a 503 or a last error event), give them a moment to
        send it, and stop; uvicorn cancels any left after CUT_OFF_GRACE_S instead of waiting for them."""
        self.client.cut_off()
        deadline = time.monotonic() + CUT_OFF_GRACE_S
        while self.client.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.config.timeout_graceful_shutdown = CUT_OFF_GRACE_S
        self.should_exit = True
