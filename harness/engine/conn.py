"""libvirt connection to the bed: event loop, keepalive, bounded calls, device-removed events.

Every libvirt call runs with a deadline: a call that does not return in time raises
LibvirtTimeout and the connection is dropped, so a stuck bed ends a scenario instead of a night.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable

import libvirt
import libvirt_qemu

from harness.errors import HarnessError

_loop_started = False
_loop_lock = threading.Lock()


#: Ctrl-C must reach the main thread at once. The kernel hands a process signal to any thread that does not
#: block it; one that lands in a helper thread leaves the main thread asleep in a wait until that wait ends
#: (a wait-removed can last 150 s). Helper threads block these, and the main thread's waits are sliced
#: (WAIT_SLICE) so a pending signal is acted on within a second anyway.
_MAIN_ONLY = {signal.SIGINT, signal.SIGTERM}
WAIT_SLICE = 1.0
#: how often a libvirt call that has not returned asks whether its bed is still there (Conn.abandon_if)
ABANDON_EVERY = 5.0


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_ONLY)


def _ensure_event_loop() -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            _block_signals()
            while True:
                libvirt.virEventRunDefaultImpl()
        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class _Caller:
    """One daemon thread that runs a connection's libvirt calls in order.

    Why not a ThreadPoolExecutor: Python joins an executor's worker threads at exit, so one call stuck in
    libvirt for good (seen: virNodeDeviceReAttach of a VF that an orphaned QEMU still held) kept the whole
    pytest process from exiting after its run had ended. A daemon thread is left behind instead.
    """

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._work, name="libvirt-call", daemon=True).start()

    def _work(self) -> None:
        _block_signals()
        while (item := self._queue.get()) is not None:
            fut, fn, args = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:     # handed to the caller, whatever it is
                    fut.set_exception(e)

    def submit(self, fn, *args) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fut, fn, args))
        return fut

    def shutdown(self, wait: bool = False) -> None:
        """Let the thread end after the calls already queued (a stuck one: never; it is a daemon)."""
        self._queue.put(None)


def _call_pool() -> _Caller:
    return _Caller()


def _silence(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


class LibvirtTimeout(HarnessError):
    pass


_CLOSE_REASONS = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error on the connection",
                  libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd or the SSH tunnel closed it",
                  libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout: libvirtd stopped answering",
                  libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the harness"}


def keepalive() -> tuple[int, int]:
    """(interval s, missed answers) before libvirt declares the daemon dead. Default 10 x 12 = 2
    minutes: a bed busy with a nested guest answers late, not never. HX_KEEPALIVE="5,4" shortens it."""
    v = os.environ.get("HX_KEEPALIVE", "10,12")
    try:
        i, n = (int(x) for x in v.split(","))
        if i > 0 and n > 0:
            return i, n
    except ValueError:
        pass
    raise HarnessError(f"HX_KEEPALIVE={v!r} is not 'interval,count' with two positive integers", hint='e.g. "10,12"')


class Conn:
    """One libvirt connection with events. Reconnects on demand (after a daemon restart)."""

    def __init__(self, uri: str, call_timeout: float = 120.0):
        self.uri = uri
        self.call_timeout = call_timeout
        self._pool = _call_pool()
        self._events: list[tuple[float, str, str, str]] = []   # (time, domain, kind, alias)
        self._cv = threading.Condition()
        self._cb_ids: list[int] = []
        self.seconds = 0.0            # wall time spent inside libvirt calls (for benchmarks)
        self.virconn: libvirt.virConnect | None = None
        self.closed: str | None = None   # why libvirt closed the connection (set by its close callback)
        #: asked every ABANDON_EVERY s of a call still running: a non-empty answer (the bed's kernel stalled, its
        #: VM is gone) ends the wait at once, instead of after the call's whole timeout
        self.abandon_if: Callable[[], str] | None = None
        _ensure_event_loop()
        libvirt.registerErrorHandler(_silence, None)
        self.connect()

    # ---- connection ------------------------------------------------------------------
    def connect(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                c = self._bounded(libvirt.open, self.uri, timeout=30)
                break
            except (libvirt.libvirtError, LibvirtTimeout) as e:
                last = e
                time.sleep(1)
        else:
            raise HarnessError(f"cannot connect to {self.uri.split('?')[0]}: {last}",
                               hint="is the bed up? 'harness bed status'")
        c.setKeepAlive(*keepalive())
        self.closed: str | None = None
        c.registerCloseCallback(self._on_close, None)
        self.virconn = c
        self._cb_ids = [
            c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_removed, None),
            c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                                     self._on_removal_failed, None),
            c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None),
        ]

    def _on_close(self, _conn, reason, _opaque) -> None:
        with self._cv:
            self.closed = _CLOSE_REASONS.get(reason, f"reason {reason}")
            self._cv.notify_all()

    def close(self) -> None:
        c, self.virconn = self.virconn, None
        if c is None:
            return
        try:
            c.unregisterCloseCallback()
            for i in self._cb_ids:
                c.domainEventDeregisterAny(i)
            self._bounded(c.close, timeout=10)
        except (libvirt.libvirtError, LibvirtTimeout):
            pass

    def ensure(self, reconnect_timeout: float = 90.0) -> None:
        """Reconnect if the connection died (another worker's scenario restarted libvirtd)."""
        try:
            if self.virconn is not None and not self.closed and self._bounded(self.virconn.isAlive, timeout=30):
                return
        except (libvirt.libvirtError, LibvirtTimeout):
            pass
        self.reconnect(timeout=reconnect_timeout)

    def reconnect(self, timeout: float = 90.0) -> None:
        self.close()
        self.connect(timeout=timeout)

    # ---- bounded calls ---------------------------------------------------------------
    def _bounded(self, fn, *args, timeout: float | None = None):
        fut = self._pool.submit(fn, *args)
        t0 = time.monotonic()
        deadline = t0 + (timeout or self.call_timeout)
        why = ""
        next_ask = t0 + ABANDON_EVERY
        try:
            while True:     # in slices: see WAIT_SLICE
                try:
                    return fut.result(timeout=max(0.0, min(WAIT_SLICE, deadline - time.monotonic())))
                except concurrent.futures.TimeoutError:
                    now = time.monotonic()
                    if now >= deadline:
                        raise
                    if self.abandon_if is not None and now >= next_ask:
                        next_ask = now + ABANDON_EVERY
                        why = self.abandon_if()
                        if why:
                            raise
        except concurrent.futures.TimeoutError:
            # The worker thread stays blocked in libvirt; give later calls a fresh one.
            self._pool.shutdown(wait=False)
            self._pool = _call_pool()
            name = getattr(fn, '__name__', fn)
            if why:
                raise LibvirtTimeout(f"libvirt call {name} abandoned after {time.monotonic() - t0:.0f} s: {why}",
                                     hint="the bed failed, not libvirt: see its serial log") from None
            raise LibvirtTimeout(f"libvirt call {name} did not return within "
                                 f"{timeout or self.call_timeout:.0f} s",
                                 hint="the bed or libvirtd may be stuck; see the bed's serial log") from None
        finally:
            self.seconds += time.monotonic() - t0

    def call(self, fn, *args, timeout: float | None = None):
        """Run fn(*args) (a bound libvirt method) with a deadline."""
        return self._bounded(fn, *args, timeout=timeout)

    # ---- events ----------------------------------------------------------------------
    def _on_removed(self, _conn, dom, alias, _opaque) -> None:
        with self._cv:
            self._events.append((time.monotonic(), dom.name(), "removed", alias))
            self._cv.notify_all()

    def _on_removal_failed(self, _conn, dom, alias, _opaque) -> None:
        with self._cv:
            self._events.append((time.monotonic(), dom.name(), "removal-failed", alias))
            self._cv.notify_all()

    def _on_lifecycle(self, _conn, dom, event, _detail, _opaque) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:   # QEMU gone: nobody will answer a wait any more
            with self._cv:
                self._events.append((time.monotonic(), dom.name(), "stopped", ""))
                self._cv.notify_all()

    def mark(self) -> int:
        with self._cv:
            return len(self._events)

    def events_since(self, mark: int, domain: str, kind: str = "removed") -> list[str]:
        with self._cv:
            return [a for (_, d, k, a) in self._events[mark:] if d == domain and k == kind]

    def wait_event(self, mark: int, domain: str, alias: str, timeout: float) -> str | None:
        """Wait for removed/removal-failed of `alias` after `mark`; returns the kind, "stopped" if the
        domain stopped meanwhile, or None on timeout."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        with self._cv:
            while True:
                for (t, d, k, a) in self._events[mark:]:
                    if d == domain and (a == alias or (k == "stopped" and t >= t0)):
                        return k
                if self.closed:
                    raise HarnessError(f"the libvirt connection closed while waiting for {alias} to be removed "
                                       f"({self.closed})")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, WAIT_SLICE))   # see WAIT_SLICE

    # ---- helpers ---------------------------------------------------------------------
    def qemu_ids(self, dom: libvirt.virDomain, timeout: float = 60) -> set[str]:
        """QEMU's peripheral ids (qom-list /machine/peripheral): the ids libvirt gave devices."""
        out = self.call(libvirt_qemu.qemuMonitorCommand, dom,
                        json.dumps({"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}}), 0,
                        timeout=timeout)
        return {p["name"] for p in json.loads(out)["return"] if p.get("type", "").startswith("child<")}

    def version(self) -> str:
        v = self.call(self.virconn.getLibVersion)
        return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
