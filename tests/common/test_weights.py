from __future__ import annotations

import hashlib
import json
import pickle

import pytest

from common import weights
from common.errors import ToolError
from common.spec import WeightsSpec

torch = pytest.importorskip("torch", reason="runs in the base suite; the py3.12 suite is torch-free")


def _spec_for(path, **kw):
    return WeightsSpec(url="https://example.invalid/w.pth", filename=path.name, **kw)


def test_verify_sha256_prefix_and_md5(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    weights.verify(f, _spec_for(f, sha256_prefix=sha[:8]))
    weights.verify(f, _spec_for(f, sha256=sha))
    weights.verify(f, _spec_for(f, md5=hashlib.md5(b"weights").hexdigest()))


def test_checksum_mismatch_names_both_hashes(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"truncated")
    with pytest.raises(ToolError, match=r"checksum mismatch for .*w.pth: expected 00000000..., got [0-9a-f]{64}"):
        weights.verify(f, _spec_for(f, sha256_prefix="00000000"))


def test_missing_weights_file(tmp_path):
    with pytest.raises(ToolError, match="not found"):
        weights.fetch(_spec_for(tmp_path / "w.pth", md5="0" * 32), tmp_path / "w.pth")


def test_failed_download_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_VISION_CACHE", str(tmp_path))
    spec = WeightsSpec(url="http://127.0.0.1:9/none.pth", filename="none.pth", md5="0" * 32)
    with pytest.raises(ToolError, match="cannot download"):
        weights.fetch(spec)
    assert not any((tmp_path / "weights").glob("*"))


def test_safe_load_reads_state_dicts_and_refuses_code(tmp_path):
    sd = {"state_dict": {"a.weight": torch.ones(2, 3), "b": torch.arange(4)}, "meta": {"epoch": 12}}
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    loaded = weights.load_state_dict(good)
    assert torch.equal(loaded["a.weight"], torch.ones(2, 3)) and set(loaded) == {"a.weight", "b"}

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(ToolError, match="refusing to unpickle"):
        weights.safe_load(bad)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(pickle.dumps([1, 2])[:5])
    with pytest.raises(ToolError, match="junk.pth"):
        weights.safe_load(junk)


def test_check_keys_lists_missing_and_unexpected():
    weights.check_keys(["a", "b"], ["b", "a"], "w.pth")
    with pytest.raises(ToolError, match=r"1 missing: b; 1 unexpected: c"):
        weights.check_keys(["a", "b"], ["a", "c"], "w.pth")


def _serve_once(body: bytes, claimed_length: int):
    """A local HTTP server whose response claims ``claimed_length`` bytes but sends ``body``."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(claimed_length))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    return server


def test_truncated_download_never_stays_under_the_final_name(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_VISION_CACHE", str(tmp_path))
    server = _serve_once(b"x" * 1000, claimed_length=5000)
    url = f"http://127.0.0.1:{server.server_port}/w.pth"
    spec = WeightsSpec(url=url, filename="w.pth", md5="0" * 32)
    with pytest.raises(ToolError, match="w.pth"):
        weights.fetch(spec)
    assert not any((tmp_path / "weights").iterdir())
    server.server_close()


def test_complete_download_is_verified_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_VISION_CACHE", str(tmp_path))
    body = b"real weights"
    server = _serve_once(body, claimed_length=len(body))
    url = f"http://127.0.0.1:{server.server_port}/w.pth"
    spec = WeightsSpec(url=url, filename="w.pth", md5=hashlib.md5(body).hexdigest())
    path = weights.fetch(spec)
    assert path == tmp_path / "weights" / "w.pth" and path.read_bytes() == body
    assert weights.fetch(spec) == path  # cached: the server answers only once
    server.server_close()


def test_weights_record_and_its_report_line(tmp_path):
    ckpt = tmp_path / "d0.pth"
    ckpt.write_bytes(b"not really a checkpoint")
    record = weights.weights_record(ckpt, verified=False)
    assert record == {"file": str(ckpt), "sha256": hashlib.sha256(b"not really a checkpoint").hexdigest(),
                      "verified": False}
    assert "NOT verified against the published checksum" in weights.describe_weights(record)
    assert "matches the published checksum" in weights.describe_weights({**record, "verified": True})
    assert weights.describe_weights(None).startswith("unknown")


def test_reports_find_the_export_record_beside_onnx_and_om_files(tmp_path):
    from common import exportrecord

    onnx_file, om_file = tmp_path / "m_ascend_bs1.onnx", tmp_path / "m_bs1_Ascend310P3.om"
    assert exportrecord.export_record_path(onnx_file) == tmp_path / "m_ascend_bs1.parity.json"
    assert exportrecord.export_record_path(om_file) == tmp_path / "m_bs1_Ascend310P3.source.json"
    assert exportrecord.weights_of(onnx_file) is None  # no record: the report says "unknown"
    record = {"file": "/w.pth", "sha256": "0" * 64, "verified": True}
    (tmp_path / "m_ascend_bs1.parity.json").write_text(json.dumps({"ok": True, "weights": record}))
    (tmp_path / "m_bs1_Ascend310P3.source.json").write_text(json.dumps({"onnx": str(onnx_file), "weights": record}))
    assert exportrecord.weights_of(onnx_file) == record == exportrecord.weights_of(om_file)


def test_load_checked_fills_bn_counters_and_refuses_wrong_shapes(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    state = {k: v.clone() + 1 for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = weights.load_checked(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)),
                                  state, tmp_path / "w.pth", variant_hint="another toy")
    assert not loaded.training and torch.equal(loaded[0].weight, state["0.weight"])
    state["1.weight"] = torch.ones(5)
    with pytest.raises(ToolError, match=r"1.weight \[5\] \(model \[4\]\).*it is another toy"):
        weights.load_checked(model, state, tmp_path / "w.pth", variant_hint="another toy")
    del state["1.weight"]
    with pytest.raises(ToolError, match="1 missing: 1.weight"):
        weights.load_checked(model, state, tmp_path / "w.pth", variant_hint="another toy")
