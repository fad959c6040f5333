"""The drain logic of `DrainingServer` on its own: the shutdown timeout is enforced, a second signal
stops at once, and neither re-raises the signal (the process exits 0). The whole server under SIGTERM
is in test_cli.py."""

import signal
import time

import uvicorn

from loraplex.router.draining import CUT_OFF_GRACE_S, DrainingServer


class Client:
    """EngineClient's part in a drain; `cut_off` ends every running request, as the real one does."""

    def __init__(self, in_flight: int):
        self.in_flight = in_flight
        self.draining = False
        self.cut = False

    def drain(self) -> None:
        self.draining = True

    def cut_off(self) -> None:
        self.cut = True
        self.in_flight = 0


def server(in_flight: int, shutdown_timeout: float) -> tuple[DrainingServer, Client]:
    client = Client(in_flight)
    return DrainingServer(uvicorn.Config(app=None), client, shutdown_timeout), client


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_requests_that_outlast_the_shutdown_timeout_are_cut_off():
    drained, client = server(in_flight=2, shutdown_timeout=0.2)
    drained.handle_exit(signal.SIGTERM, None)
    assert client.draining and not drained.should_exit  # waiting for the two
    assert wait_for(lambda: drained.should_exit)
    assert client.cut  # they were ended, and uvicorn does not wait for them past the grace below
    assert drained.config.timeout_graceful_shutdown == CUT_OFF_GRACE_S
    assert drained._captured_signals == []


def test_requests_that_finish_in_time_end_a_plain_shutdown():
    drained, client = server(in_flight=1, shutdown_timeout=30)
    drained.handle_exit(signal.SIGTERM, None)
    client.in_flight = 0
    assert wait_for(lambda: drained.should_exit) and not client.cut


def test_a_second_signal_stops_at_once():
    drained, client = server(in_flight=3, shutdown_timeout=30)
    drained.handle_exit(signal.SIGTERM, None)
    drained.handle_exit(signal.SIGINT, None)
    assert wait_for(lambda: drained.should_exit, timeout=2.0) and client.cut
    assert drained._captured_signals == []  # so the process exits 0, not 130 or 143
