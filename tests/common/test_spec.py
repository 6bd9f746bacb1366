from __future__ import annotations

import pytest

from common.errors import ToolError
from common.spec import MODELS, TOOLS_DIR, load_spec


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_valid_data_file(model):
    spec = load_spec(model)
    assert spec.name == model
    assert len(spec.input.shape) == 3 and spec.input.batch_sizes
    assert spec.published["accuracy"], "published accuracy figures come from the seed"
    figures = spec.published["accuracy"] + spec.published["throughput"]
    assert all(fig["source"].strip() for fig in figures), "every published figure names its source"
    assert any(fig["source"].startswith("seed ") for fig in spec.published["accuracy"])
    assert spec.weights.url.startswith("https://")


def test_unknown_model_names_the_valid_ones():
    assert list(MODELS) == sorted(p.parent.name for p in TOOLS_DIR.glob("*/model.toml")) and MODELS
    with pytest.raises(ToolError, match=f"valid: {', '.join(MODELS)}"):
        load_spec("yolo")


def test_batch_check_lists_valid_sizes(tiny_spec):
    assert tiny_spec.check_batch(2) == 2
    with pytest.raises(ToolError, match=r"BATCH=3 .*valid: 1, 2"):
        tiny_spec.check_batch(3)


def test_broken_toml_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.toml"
    bad.write_text("name = \n")
    with pytest.raises(ToolError, match="not valid TOML"):
        load_spec(bad)


def test_missing_checksum_is_refused(tmp_path, tiny_spec):
    text = tiny_spec.path.read_text().replace('sha256_prefix = "0123abcd"', "")
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(ToolError, match="exactly one of sha256"):
        load_spec(p)
