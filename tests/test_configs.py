"""Every example config under configs/ is a valid config of the method its file name starts with."""

import pathlib

import pytest

from veil.cli.common import method_config
from veil.registry import get_method

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    method_cls = get_method(path.name.split("_")[0])
    config = method_config(method_cls, ["circle"], str(path))
    assert config.concepts == ["circle"]


def test_there_are_example_configs():
    assert len(CONFIGS) >= 4
