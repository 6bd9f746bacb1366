"""Our model's state_dict against the key list written down from the upstream definitions."""

from __future__ import annotations

from pathlib import Path

from tools.retinamask.model import RetinaMask

KEYS_FILE = Path(__file__).resolve().parents[2] / "tools" / "retinamask" / "upstream_keys.txt"


def upstream_keys() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split()
            rows.append((key, tuple(int(v) for v in shape.split("x"))))
    return rows


def test_state_dict_keys_and_shapes_equal_the_upstream_list():
    ours = [(k, tuple(v.shape)) for k, v in RetinaMask().state_dict().items()]
    expected = upstream_keys()
    assert len(expected) == 318
    assert set(ours) - set(expected) == set() and set(expected) - set(ours) == set()
    assert ours == expected  # the same registration order as upstream, too


def test_key_list_names_its_source():
    header = "\n".join(line for line in KEYS_FILE.read_text().splitlines() if line.startswith("#"))
    assert "Ascend/ModelZoo-PyTorch" in header and "PyTorch/contrib/cv/detection/RetinaMask" in header
    assert "retinanet_mask_R-50-FPN_2x_adjust_std011_ms" in header
