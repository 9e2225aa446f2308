"""What a worker reads from the command line BentoML started it with."""

from __future__ import annotations

import logging

import pytest

from bentos.api.worker import KEEP_ALIVE_S, UVICORN_KEEP_ALIVE_S, keep_alive_of, warn_short_keep_alive


@pytest.mark.parametrize(("argv", "seconds"), [
    (["service", "--fd", "3"], UVICORN_KEEP_ALIVE_S),
    (["service", "--timeout-keep-alive", "120", "--fd", "3"], 120),
    (["service", "--timeout-keep-alive=30"], 30),
])
def test_the_keep_alive_a_worker_was_given(argv: list[str], seconds: int) -> None:
    assert keep_alive_of(argv) == seconds


def test_a_short_keep_alive_is_warned_about_naming_the_flag(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="switchyard"):
        warn_short_keep_alive(["service"])
        assert f"--timeout-keep-alive {KEEP_ALIVE_S}" in caplog.text
        caplog.clear()
        warn_short_keep_alive(["service", "--timeout-keep-alive", str(KEEP_ALIVE_S)])
        assert caplog.text == ""
