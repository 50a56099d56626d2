"""The SIGINT guard a Manager installs lives only as long as the managers do,
and an embedder can refuse it (issue 22, item 16).

Regression: ``Manager()`` replaced the process's SIGINT handler for good: after
the manager was gone the guard stayed, and an ``asyncio.run`` after it found no
default handler, so it installed none of its own and a Ctrl-C raised
KeyboardInterrupt inside the coroutine instead of cancelling the main task.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.signalsafe
import pytest
from irqbypass import _signals as signals


@pytest.fixture(autouse=True)
def _default_sigint() -> Iterator[None]:
    """Each test starts with Python's own SIGINT handler, SIGINT unblocked."""
    before = signal.getsignal(signal.SIGINT)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals._DEFERRED.clear()
    try:
        yield
    finally:
        gc.collect()
        signal.signal(signal.SIGINT, before)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signals._DEFERRED.clear()


def handler() -> Any:
    return signal.getsignal(signal.SIGINT)


def guarded() -> bool:
    return isinstance(handler(), signals._Guard)


def test_the_last_manager_gone_puts_python_handler_back() -> None:
    first = irqbypass.Manager()
    assert guarded()
    second = irqbypass.Manager()
    del first
    gc.collect()
    assert guarded(), "a living manager lost its guard"
    del second
    gc.collect()
    assert handler() is signal.default_int_handler


def test_guard_sigint_false_touches_no_handler() -> None:
    manager = irqbypass.Manager(guard_sigint=False)
    assert handler() is signal.default_int_handler
    seen: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    mine = handler()
    another = irqbypass.Manager(guard_sigint=False)
    assert handler() is mine
    signal.raise_signal(signal.SIGINT)
    assert seen == [signal.SIGINT]
    del manager, another


def test_guard_sigint_must_be_a_bool() -> None:
    with pytest.raises(irqbypass.IrqBypassError, match="guard_sigint=1 is not True or False"):
        irqbypass.Manager(guard_sigint=1)  # type: ignore[arg-type]
    assert handler() is signal.default_int_handler


def test_a_handler_set_since_is_left_alone() -> None:
    manager = irqbypass.Manager()
    assert guarded()

    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGINT, mine)
    del manager
    gc.collect()
    assert handler() is mine


def test_a_guard_the_program_installed_stays() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGINT, mine)
    assert irqbypass.signalsafe.guard_signals((signal.SIGINT,)) == [signal.SIGINT]
    guard = handler()
    manager = irqbypass.Manager()
    assert handler() is guard
    del manager
    gc.collect()
    assert handler() is guard


def test_a_guard_the_program_asked_for_while_a_managers_stood_there_stays() -> None:
    """The program calls guard_signals() (for sections of its own) while a
    manager's guard stands in front of Python's handler: the call found SIGINT
    guarded and changed nothing, so the guard stayed the managers', and the
    last of them took it away: the program's sections were cut by Ctrl-C
    again. The guard it asked for is its own now, and stays."""
    manager = irqbypass.Manager()
    guard = handler()
    assert irqbypass.signalsafe.guard_signals((signal.SIGINT,)) == [signal.SIGINT]
    del manager
    gc.collect()
    assert handler() is guard, "the guard the program asked for was taken away"
    another = irqbypass.Manager()  # a later manager leaves it alone too
    del another
    gc.collect()
    assert handler() is guard


def test_an_in_process_run_leaves_sigint_as_it_found_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``irqbypass run`` called in-process (an embedder, the tests) guards
    SIGINT only while it runs: its topology's manager stands the guard there,
    and the run asks for nothing more, so once the run's objects are gone
    Python's handler is back (asyncio.run after it installs its graceful one).
    Since a guard a program asks for stays its own, the run's guard_signals()
    of SIGINT made that guard stay after it."""
    from irqbypass import cli

    topology = tmp_path / "t.toml"
    topology.write_text(
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=0.0, count=3}\n'
        '[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\n'
    )
    assert cli.main(["run", str(topology), "--json"]) == 0
    capsys.readouterr()
    gc.collect()
    assert handler() is signal.default_int_handler


def test_a_manager_dropped_in_another_thread_is_restored_later() -> None:
    """A finalizer off the main thread cannot set a handler: the guard stays
    (it passes signals on) until a lease is given back in the main thread."""
    box = [irqbypass.Manager()]
    errors: list[BaseException] = []

    def drop() -> None:
        try:
            box.clear()
            gc.collect()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=drop)
    thread.start()
    thread.join()
    assert errors == [] and guarded()
    irqbypass.Manager()  # taken and given back in the main thread
    gc.collect()
    assert handler() is signal.default_int_handler


async def interrupted(events: list[str]) -> None:
    """Ctrl-C in the middle of the coroutine, then wait on the loop."""
    try:
        signal.raise_signal(signal.SIGINT)
        await asyncio.sleep(30)  # a hang guard: the interrupt ends it at once
        events.append("slept")
    except asyncio.CancelledError:
        events.append("cancelled")  # asyncio's own handler: the main task is cancelled
        raise
    except KeyboardInterrupt:
        events.append("KeyboardInterrupt inside the coroutine")
        raise


def run_interrupted() -> list[str]:
    events: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(interrupted(events))
    return events


def test_asyncio_run_after_the_manager_is_gone_cancels_gracefully() -> None:
    manager = irqbypass.Manager()
    del manager
    gc.collect()
    assert run_interrupted() == ["cancelled"]


def test_asyncio_run_beside_an_unguarded_manager_cancels_gracefully() -> None:
    manager = irqbypass.Manager(guard_sigint=False)
    assert run_interrupted() == ["cancelled"]
    assert handler() is signal.default_int_handler
    del manager


def test_asyncio_run_beside_a_guarding_manager_is_what_the_opt_out_is_for() -> None:
    """The documented trade-off: while a guarding manager lives, asyncio finds
    the guard, installs no handler of its own, and the Ctrl-C is a plain
    KeyboardInterrupt (the manager's bookkeeping is still never cut)."""
    manager = irqbypass.Manager()
    assert run_interrupted() == ["KeyboardInterrupt inside the coroutine"]
    del manager
