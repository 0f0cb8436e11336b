"""The ``coordination:`` config section: defaults, validation, and a DSN never shown with its password."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ckptd.config.coordination import redact_dsn
from ckptd.config.load import parse_config
from ckptd.config.model import CoordinationConfig
from ckptd.config.spec import config_to_mapping
from ckptd.errors import ConfigError


def test_default_is_one_local_daemon_per_root(tmp_path: Path) -> None:
    config = parse_config("roots: [{path: runs}]", source=tmp_path / "c.yaml")
    assert config.coordination == CoordinationConfig("local", None, None, timedelta(seconds=30))


def test_postgres_section_parses(tmp_path: Path) -> None:
    text = "roots: [{path: runs}]\ncoordination: {backend: postgres, node: gpu-07, lease: 10s}"
    config = parse_config(text, source=tmp_path / "c.yaml")
    assert config.coordination == CoordinationConfig(
        "postgres", None, "gpu-07", timedelta(seconds=10)
    )


def test_bad_values_are_each_reported(tmp_path: Path) -> None:
    text = "roots: [{path: runs}]\ncoordination: {backend: etcd, node: 'a b', lease: 0s, dns: x}"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source=tmp_path / "c.yaml")
    wheres = [issue.where for issue in caught.value.issues]
    assert wheres == [
        "coordination.dns",
        "coordination.backend",
        "coordination.node",
        "coordination.lease",
    ], caught.value.lines()
    assert 'did you mean "dsn"' in str(caught.value)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://ckptd:s3cret@db:5432/ckptd", "postgresql://ckptd:***@db:5432/ckptd"),
        ("postgres://db/ckptd?user=u&password=s3cret", "postgres://db/ckptd?user=u&password=***"),
        ("host=db password=s3cret user=u", "host=db password=*** user=u"),
        ("host=db password = 'a \\' b' user=u", "host=db password = *** user=u"),
        ("host=db user=u", "host=db user=u"),
        ("postgresql://u@db/ckptd", "postgresql://u@db/ckptd"),
    ],
)
def test_dsn_password_is_hidden(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_config_show_hides_the_password(tmp_path: Path) -> None:
    text = (
        "roots: [{path: runs}]\ncoordination: {backend: postgres, dsn: 'host=db password=hunter2'}"
    )
    mapping = config_to_mapping(parse_config(text, source=tmp_path / "c.yaml"))
    assert mapping["coordination"]["dsn"] == "host=db password=***"
    assert "hunter2" not in repr(mapping)
