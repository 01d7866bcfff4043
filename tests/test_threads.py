"""ftx._threads: tasks side by side whose failure is raised as itself (run_together,
with_background), and a worker-thread job that is always waited for (ThreadJob)."""

from __future__ import annotations

import threading

import pytest
import trio

from ftx._threads import ThreadJob, run_together, with_background
from ftx.errors import RemoteError


class Boom(Exception):
    pass


async def test_with_background_returns_main_and_stops_the_background() -> None:
    ticks: list[int] = []

    async def background() -> None:
        while True:
            ticks.append(1)
            await trio.sleep(0.01)

    async def main() -> str:
        await trio.sleep(0.05)
        return "done"

    with trio.fail_after(5):
        assert await with_background(background, main) == "done"
    count = len(ticks)
    assert count >= 1  # it ran beside main
    await trio.sleep(0.05)
    assert len(ticks) == count  # and was cancelled when main returned


@pytest.mark.parametrize("failing", ["main", "background"])
async def test_with_background_raises_a_failure_itself(failing: str) -> None:
    async def background() -> None:
        if failing == "background":
            raise RemoteError("busy", "the server is busy")
        await trio.sleep_forever()

    async def main() -> None:
        if failing == "main":
            raise Boom
        await trio.sleep_forever()

    expected = Boom if failing == "main" else RemoteError
    with trio.fail_after(5), pytest.raises(expected):  # not an exception group
        await with_background(background, main)


async def test_with_background_is_cancelled_from_outside() -> None:
    with trio.move_on_after(0.05) as scope:
        await with_background(trio.sleep_forever, trio.sleep_forever)
    assert scope.cancelled_caught


async def test_run_together_raises_the_first_failure_itself() -> None:
    async def fails() -> None:
        raise Boom

    with trio.fail_after(5), pytest.raises(Boom):
        await run_together(trio.sleep_forever, fails)


async def test_a_thread_job_runs_now_and_its_result_is_waited_for() -> None:
    started = threading.Event()
    release = threading.Event()

    def work() -> int:
        started.set()
        release.wait(5)
        return 7

    job = ThreadJob(work)
    with trio.fail_after(5):
        await trio.to_thread.run_sync(started.wait, 5)  # started without being awaited
        release.set()
        assert await job.result() == 7
