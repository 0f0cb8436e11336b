"""Prometheus metrics for the daemon, in a private registry, served over HTTP when configured.

Each ``Metrics`` owns its own ``CollectorRegistry``, so nothing is global: two daemons in one test
process do not share counters, and importing this module registers nothing. The HTTP server only
runs when ``metrics.listen`` is set (off by default; the shipped systemd unit then also needs
``AF_INET``/``AF_INET6``, see systemd/ckptd.service).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    generate_latest,
    start_http_server,
)

from ckptd import __version__
from ckptd.errors import CkptdError, ConfigError, ConfigIssue

logger = logging.getLogger(__name__)

SERVER_STOP_TIMEOUT_SECONDS = 5.0


REFUSAL_CLASSES = ("global", "call", "unparseable", "structure")


def refusal_class(reason: str) -> str:
    """The class of a refusal line (the label of ``ckptd_refused_files``); pure."""
    if "is not allowed" in reason or "not on the allowlist" in reason:
        return "global"
    if "constructed callable" in reason or "hidden call" in reason or "may be referenced" in reason:
        return "call"
    if "cannot be checked statically" in reason:
        return "unparseable"
    return "structure"


class Metrics:
    """The daemon's counters and gauges; call the ``record_*``/``set_*`` methods from anywhere."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        checkpoints = "Checkpoints the daemon has {}, since it started"
        self._seen = Counter(
            "ckptd_checkpoints_seen", checkpoints.format("seen complete"), registry=registry
        )
        self._converted = Counter(
            "ckptd_checkpoints_converted",
            checkpoints.format("converted to SB2 zip"),
            registry=registry,
        )
        self._refused = Counter(
            "ckptd_checkpoints_refused", checkpoints.format("refused as unsafe"), registry=registry
        )
        self._refused_files = Counter(
            "ckptd_refused_files",
            "Files refused as unsafe since the daemon started, by reason class: global (names "
            "something outside the allowlist), call (calls what the pickle built or hides a call), "
            "unparseable (cannot be checked statically), structure (any other refused construct)",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSAL_CLASSES:
            self._refused_files.labels(reason=reason)
        self._broken = Counter(
            "ckptd_checkpoints_broken", checkpoints.format("found unreadable"), registry=registry
        )
        self._bytes_pruned = Counter(
            "ckptd_pruned_bytes", "Bytes of checkpoints removed by retention", registry=registry
        )
        self._queue_depth = Gauge(
            "ckptd_queue_depth", "Work items waiting for the worker", registry=registry
        )
        self._last_prune = Gauge(
            "ckptd_last_successful_prune_timestamp_seconds",
            "Unix time of the last prune pass that completed for a run",
            ["run"],
            registry=registry,
        )
        self._observer_restarts = Counter(
            "ckptd_observer_restarts",
            "File-system observers restarted after a failure",
            registry=registry,
        )
        self._scrub_corrupt = Gauge(
            "ckptd_scrub_corrupt_checkpoints",
            "Checkpoints whose hash or structure did not verify in the last completed scrub",
            registry=registry,
        )
        self._coordination_up = Gauge(
            "ckptd_coordination_up",
            "1 while the coordination database answers (coordination.backend postgres; always 1"
            " with the local backend); 0: nothing is converted or deleted in shared runs",
            registry=registry,
        )
        self._coordination_up.set(1)
        self._runs_owned = Gauge(
            "ckptd_runs_owned",
            "Runs this daemon holds the lease of (backend postgres)",
            registry=registry,
        )
        Info("ckptd_build", "ckptd version", registry=registry).info({"version": __version__})

    def record_seen(self, count: int = 1) -> None:
        self._seen.inc(count)

    def record_converted(self, count: int = 1) -> None:
        self._converted.inc(count)

    def record_refused(self, count: int = 1, *, reason: str = "") -> None:
        """``reason`` is the refusal line that was logged (its class labels ckptd_refused_files)."""
        self._refused.inc(count)
        self._refused_files.labels(reason=refusal_class(reason)).inc(count)

    def record_broken(self, count: int = 1) -> None:
        self._broken.inc(count)

    def record_pruned(self, size: int) -> None:
        """Bytes removed (moved to the trash or unlinked) by one deletion."""
        self._bytes_pruned.inc(size)

    def set_queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def record_prune_success(self, run: str, when: datetime) -> None:
        """A prune pass finished for ``run`` (relative to its root) at the aware datetime ``when``."""
        self._last_prune.labels(run=run).set(when.timestamp())

    def forget_run(self, run: str) -> None:
        """Drop a run's labelled series (the run was removed), so dead runs do not pile up."""
        with contextlib.suppress(KeyError):
            self._last_prune.remove(run)

    def record_observer_restart(self) -> None:
        self._observer_restarts.inc()

    def set_coordination(self, *, available: bool, owned: int) -> None:
        self._coordination_up.set(1 if available else 0)
        self._runs_owned.set(owned)

    def set_scrub_corrupt(self, count: int) -> None:
        self._scrub_corrupt.set(count)

    def render(self) -> bytes:
        """The text exposition format, as served on /metrics."""
        data: bytes = generate_latest(self.registry)
        return data


@dataclass
class MetricsServer:
    """A running (or disabled) metrics endpoint; ``stop()`` is safe to call more than once."""

    address: tuple[str, int] | None = None  # None when metrics are off
    _server: WSGIServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(SERVER_STOP_TIMEOUT_SECONDS)


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port``; empty host = all interfaces) as (host, port).

    Raise ConfigError naming ``metrics.listen`` when it is malformed.
    """
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        issue = ConfigIssue("metrics.listen", f"expected HOST:PORT, got {listen!r}")
        raise ConfigError(None, [issue])
    return host or "0.0.0.0", int(port_text)


def start_metrics_server(listen: str | None, metrics: Metrics) -> MetricsServer:
    """Serve ``metrics`` on ``listen`` in a daemon thread; a disabled server when ``listen`` is None.

    Raise ConfigError for a malformed address and CkptdError when the address cannot be bound.
    """
    if listen is None:
        return MetricsServer()
    host, port = parse_listen(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as err:
        raise CkptdError(f"cannot serve metrics on {listen}: {err.strerror or err}") from err
    bound_host, bound_port = server.server_address[:2]
    logger.info("serving metrics on http://%s:%d/metrics", bound_host, bound_port)
    return MetricsServer((str(bound_host), int(bound_port)), server, thread)
