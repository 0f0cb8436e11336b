"""Metrics: a private registry, scraped over real HTTP from a server on an ephemeral port."""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime

import pytest

from ckptd import __version__
from ckptd.daemon.metrics import Metrics, parse_listen, start_metrics_server
from ckptd.errors import CkptdError, ConfigError

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


def scrape(address: tuple[str, int]) -> str:
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_metrics_server_serves_every_metric_by_name() -> None:
    metrics = Metrics()
    metrics.record_seen(3)
    metrics.record_converted()
    metrics.record_refused()
    metrics.record_broken(2)
    metrics.record_pruned(4096)
    metrics.set_queue_depth(7)
    metrics.record_prune_success("ppo-cartpole-3", datetime(2026, 11, 23, 20, 0, tzinfo=UTC))
    metrics.record_observer_restart()
    metrics.set_scrub_corrupt(1)
    server = start_metrics_server("127.0.0.1:0", metrics)
    try:
        assert server.address is not None
        assert server.address[1] > 0
        text = scrape(server.address)
    finally:
        server.stop()
    expected_lines = [
        "ckptd_checkpoints_seen_total 3.0",
        "ckptd_checkpoints_converted_total 1.0",
        "ckptd_checkpoints_refused_total 1.0",
        "ckptd_checkpoints_broken_total 2.0",
        "ckptd_pruned_bytes_total 4096.0",
        "ckptd_queue_depth 7.0",
        'ckptd_last_successful_prune_timestamp_seconds{run="ppo-cartpole-3"} 1.795464e+09',
        "ckptd_observer_restarts_total 1.0",
        "ckptd_scrub_corrupt_checkpoints 1.0",
        f'ckptd_build_info{{version="{__version__}"}} 1.0',
    ]
    lines = text.splitlines()
    for line in expected_lines:
        assert line in lines


def test_registries_are_private_per_instance() -> None:
    first, second = Metrics(), Metrics()
    first.record_seen(5)
    assert b"ckptd_checkpoints_seen_total 5.0" in first.render()
    assert b"ckptd_checkpoints_seen_total 0.0" in second.render()
    assert b"python_gc" not in first.render()  # nothing from the global default registry


def test_forget_run_drops_its_series() -> None:
    metrics = Metrics()
    metrics.record_prune_success("run-a", datetime(2026, 1, 1, tzinfo=UTC))
    metrics.forget_run("run-a")
    metrics.forget_run("never-seen")
    assert b'run="run-a"' not in metrics.render()


def test_disabled_server_is_a_no_op_that_can_be_stopped() -> None:
    server = start_metrics_server(None, Metrics())
    assert server.address is None
    server.stop()
    server.stop()


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CkptdError, match=rf"^cannot serve metrics on 127\.0\.0\.1:{port}: "):
            start_metrics_server(f"127.0.0.1:{port}", Metrics())


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
        (":9464", ("0.0.0.0", 9464)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", "host:", "host:http", "host:70000"])
def test_parse_listen_rejects_malformed_addresses(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"^metrics\.listen: expected HOST:PORT, got "):
        parse_listen(listen)
