"""One naming rule for a conversion's zip, shared by the converter, the inventory and the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptd.convert.conversion import convert_file
from ckptd.convert.naming import legacy_name_for, zip_name_for, zip_path_for


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("rl_model_5_steps.pkl", "rl_model_5_steps.zip"),
        ("sub/rl_model_5_steps.pkl", "sub/rl_model_5_steps.zip"),
        ("run.v2/model", "run.v2/model.zip"),  # a dot in a directory is not a suffix
        ("model", "model.zip"),  # SB2's loader appends .zip to extension-less names
        ("x.", "x..zip"),  # what Path.with_suffix does: the converter writes this name
        (".hidden", ".hidden.zip"),
        ("a.b.c", "a.b.zip"),
    ],
)
def test_run_relative_names_follow_the_converter(source: str, expected: str) -> None:
    assert zip_name_for(source) == expected
    assert zip_path_for(Path("/r") / source) == Path("/r") / expected


@pytest.mark.parametrize("source", ["rl_model_5_steps.pkl", "sub/dir.v1/rl_model.pkl"])
def test_a_zip_leads_back_to_the_pickle_it_was_converted_from(source: str) -> None:
    assert legacy_name_for(zip_name_for(source)) == source


@pytest.mark.parametrize("name", ["rl_model_5_steps.pkl", "model", "x."])
def test_the_converter_writes_the_named_zip(tmp_path: Path, legacy_bytes: bytes, name: str) -> None:
    source = tmp_path / name
    source.write_bytes(legacy_bytes)
    convert_file(source)
    assert zip_path_for(source).is_file()
    assert (tmp_path / zip_name_for(name)).is_file()
