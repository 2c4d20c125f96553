"""The service manager's notification protocol (systemd's sd_notify(3), ``Type=notify``) for
``edge-sync run`` and ``edge-cloud serve``: READY=1 once the process serves, STATUS= lines on
changes worth a glance in ``systemctl status``, STOPPING=1 when a stop begins, and the
watchdog (WATCHDOG=1 every half WATCHDOG_USEC) fed only while a health query says yes.

This module owns those messages and the watchdog thread; the entry points only call it. Without
NOTIFY_SOCKET (not started by systemd, or by supervisord) every call is a no-op; without
WATCHDOG_USEC (or with a WATCHDOG_PID that is not this process, sd_watchdog_enabled(3)) there is
no watchdog thread.

The datagram is sent by the PyPI library ``sdnotify`` (0.3.2, pure Python). Chosen over
``cysystemd`` (libsystemd's own sd_notify through Cython: its wheels need glibc 2.34 on x86_64
or aarch64, anything else, an older board or armv7, compiles it against libsystemd's headers,
and it brings 6 MB of bundled libraries for one datagram) and over writing the datagram here
(the house rule: never hand-write what a maintained library does). sdnotify's last release is
from 2017, which matters little for a protocol that has not changed since; it handles abstract
sockets (an '@' prefix becomes the leading NUL byte) and, with ``debug=True``, raises instead of
its bare ``except:`` that would hide every error, so the errors are handled here: a socket that
cannot be reached or a send that fails is one WARNING line, never a crash. What it lacks is done
here, each small: reading WATCHDOG_USEC/WATCHDOG_PID, a send timeout (its socket blocks), and
ASCII-only single-line messages (it encodes latin-1, systemd reads UTF-8, and a newline inside a
STATUS would start another assignment).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sdnotify  # type: ignore[import-untyped]
from loguru import logger

from edge_sync.link.state import LinkState, StatusBoard

__all__ = ["LinkStatusBoard", "ServiceNotifier", "WatchdogCadence", "link_status",
           "notify_message", "watchdog_interval_s"]

_log = logger.bind(component="service")

SEND_TIMEOUT_S = 1.0
"""A send waits at most this long for room in the service manager's socket."""


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog interval systemd asks for, in seconds, or None when there is no watchdog
    for this process (sd_watchdog_enabled(3): WATCHDOG_USEC a positive integer, and
    WATCHDOG_PID absent or this process's id)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner != str(pid):
        return None
    return int(usec) / 1_000_000


@dataclass(frozen=True)
class WatchdogCadence:
    """When the watchdog thread looks again: WATCHDOG=1 every half interval (sd_notify(3)'s
    advice) while healthy; while not, a look every tenth of the interval, so a health that
    comes back (a child restarted) is fed again long before the interval runs out."""

    interval_s: float

    @property
    def feed_every_s(self) -> float:
        return self.interval_s / 2

    @property
    def recheck_s(self) -> float:
        return self.interval_s / 10

    def wait_after(self, fed: bool) -> float:
        return self.feed_every_s if fed else self.recheck_s


def notify_message(*assignments: tuple[str, str]) -> str:
    """One datagram: ``KEY=value`` lines. A value becomes one line of printable ASCII (newlines
    and control characters become spaces, anything else non-ASCII '?')."""
    lines = []
    for key, value in assignments:
        text = "".join(c if " " <= c < "\x7f" else ("?" if c > "\x7f" else " ") for c in value)
        lines.append(f"{key}={text.strip()}")
    return "\n".join(lines)


def link_status(state: str, cloud: str, *, connected_before: bool = False) -> str:
    """The STATUS= text for the cloud link's state: connecting and waiting between attempts are
    one line, so a cloud that stays down gives one line, not one per attempt: "connecting" until
    the link was first accepted (``connected_before``: it reached SYNCING or CONNECTED),
    "reconnecting" after."""
    if state == LinkState.CONNECTED:
        return f"connected to cloud {cloud}"
    if state == LinkState.SYNCING:
        return f"syncing with cloud {cloud}"
    if state in (LinkState.CONNECTING, LinkState.BACKOFF):
        return f"{'reconnecting' if connected_before else 'connecting'} to cloud {cloud}"
    if state == LinkState.AUTH_FAILED:
        return f"cloud {cloud} refused the edge's credentials; retrying at the longest backoff"
    return f"not connected to cloud {cloud}"


class LinkStatusBoard(StatusBoard):
    """The link's StatusBoard that also tells ``on_publish`` each snapshot it is given (on the
    connection actor's thread)."""

    def __init__(self, on_publish: Callable[[dict[str, object]], None]) -> None:
        super().__init__()
        self._on_publish = on_publish

    def publish(self, snapshot: dict[str, object], **kwargs: Any) -> None:
        super().publish(snapshot, **kwargs)
        self._on_publish(snapshot)


class ServiceNotifier:
    """Talks to the service manager named by NOTIFY_SOCKET; a no-op without it. Thread-safe:
    sends are serialised under one lock, and the watchdog's health check and its WATCHDOG=1 are
    one step under that lock, so no WATCHDOG=1 follows STOPPING=1 or a failed check."""

    def __init__(self, *, watchdog_s: float | None) -> None:
        self._lock = threading.Lock()
        self._notifier: Any = None
        self._warned = False
        self._status = ""
        self._link_text = ""
        self._link_accepted = False  # the link reached SYNCING or CONNECTED once
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.cadence = WatchdogCadence(watchdog_s) if watchdog_s else None
        address = os.environ.get("NOTIFY_SOCKET", "")
        if not address:
            return
        try:
            notifier = sdnotify.SystemdNotifier(debug=True)
            notifier.socket.settimeout(SEND_TIMEOUT_S)
        except (OSError, TypeError) as exc:
            _log.bind(address=address).warning(
                "service manager notifications off: NOTIFY_SOCKET {} cannot be reached: {}",
                address, exc)
            return
        self._notifier = notifier

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ServiceNotifier:
        """The notifier this process's environment asks for (os.environ by default)."""
        env = os.environ if environ is None else environ
        return cls(watchdog_s=watchdog_interval_s(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    # -- messages ------------------------------------------------------------------------------

    def ready(self, status: str) -> None:
        """READY=1: the process serves (call it once its APIs listen)."""
        with self._lock:
            self._status = status
            self._send(("READY", "1"), ("STATUS", status))
        if self.enabled:
            _log.bind(watchdog_s=self.cadence.interval_s if self.cadence else None).info(
                "service manager told: ready")

    def status(self, text: str) -> None:
        """STATUS=text, when it differs from the last one sent."""
        with self._lock:
            if text == self._status:
                return
            self._status = text
            self._send(("STATUS", text))

    def stopping(self, status: str = "stopping") -> None:
        """STOPPING=1 (and STATUS=status): a stop begins. Ends the watchdog: nothing is fed
        after this."""
        with self._lock:
            self._stopped.set()
            self._status = status
            self._send(("STOPPING", "1"), ("STATUS", status))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(SEND_TIMEOUT_S * 2)

    def link_changed(self, snapshot: dict[str, object]) -> None:
        """A cloud link snapshot (LinkStatusBoard's callback): a STATUS line when the text its
        state gives changes; none once a stop began (the link stopping is part of it, and
        STATUS stays "stopping")."""
        if self._stopped.is_set():
            return
        state = str(snapshot.get("state"))
        text = link_status(state, str(snapshot.get("cloud", "")),
                           connected_before=self._link_accepted)
        self._link_accepted |= state in (LinkState.SYNCING, LinkState.CONNECTED)
        if text != self._link_text:
            self._link_text = text
            self.status(text)

    def link_board(self) -> StatusBoard | None:
        """A link StatusBoard that reports state changes here, or None when disabled."""
        return LinkStatusBoard(self.link_changed) if self.enabled else None

    # -- watchdog ------------------------------------------------------------------------------

    def start_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Feed the watchdog while ``healthy()`` says True, from a daemon thread; nothing
        without NOTIFY_SOCKET or WATCHDOG_USEC."""
        if not self.enabled or self.cadence is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, args=(healthy, self.cadence),
                                        name="service-watchdog", daemon=True)
        self._thread.start()

    def _watch(self, healthy: Callable[[], bool], cadence: WatchdogCadence) -> None:
        was_healthy = True
        while True:
            with self._lock:
                if self._stopped.is_set():
                    return
                now_healthy = _ask(healthy)
                if now_healthy:
                    self._send(("WATCHDOG", "1"))
                if now_healthy != was_healthy:
                    self._health_changed(now_healthy)
            was_healthy = now_healthy
            if self._stopped.wait(cadence.wait_after(now_healthy)):
                return

    def _health_changed(self, healthy: bool) -> None:
        """Under the lock: one line each way, and STATUS says why the watchdog starves."""
        if healthy:
            _log.info("supervisor healthy again; watchdog fed again")
            self._send(("STATUS", self._status))
        else:
            _log.warning("supervisor not healthy (a child down or given up); watchdog not fed")
            self._send(("STATUS", "supervisor not healthy; watchdog not fed"))

    # -- sending -------------------------------------------------------------------------------

    def _send(self, *assignments: tuple[str, str]) -> None:
        """Under the lock. A failure is one WARNING (then DEBUG), never an exception."""
        if self._notifier is None:
            return
        try:
            self._notifier.notify(notify_message(*assignments))
        except OSError as exc:
            log = _log.bind(notification=assignments[0][0])
            if not self._warned:
                self._warned = True
                log.warning("service manager notification not sent: {}", exc)
            else:
                log.debug("service manager notification not sent: {}", exc)


def _ask(healthy: Callable[[], bool]) -> bool:
    try:
        return bool(healthy())
    except Exception as exc:  # a broken health query starves the watchdog, visibly
        _log.opt(exception=exc).error("health query failed: {!r}", exc)
        return False
