from __future__ import annotations

import json
import os
import stat

import pytest

from common import atc, cann
from common.errors import ToolError


@pytest.mark.parametrize("spelling", ["310P3", "Ascend310P3", "ascend310p3", "310p3", " ASCEND310P3 "])
def test_every_spelling_of_a_chip_is_one_soc_name(spelling):
    assert atc.soc_version(spelling) == "Ascend310P3"


def test_soc_version_accepts_names_from_npu_smi():
    assert atc.soc_version("Ascend910B4") == "Ascend910B4"
    assert atc.soc_version("910proa") == "Ascend910ProA"


@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_chip_is_refused_with_the_fix(empty):
    with pytest.raises(ToolError, match=r"^CHIP is empty: set CHIP=.*310P3"):
        atc.soc_version(empty)


def test_wrong_chip_lists_valid_ones():
    with pytest.raises(ToolError, match=r"unknown CHIP '310X'.*310P3.*910B4"):
        atc.soc_version("310X")


def test_command_from_data_file(tiny_spec, tmp_path):
    job = atc.build_atc(tiny_spec, tmp_path / "m.onnx", tmp_path / "om", chip="310P3", batch=2,
                        out_nodes=["dets", "labels"])
    assert job.argv[:2] == ["atc", "--framework=5"]
    assert "--input_shape=input:2,3,32,48" in job.argv
    assert "--soc_version=Ascend310P3" in job.argv
    assert "--out_nodes=dets;labels" in job.argv
    assert "--precision_mode=allow_mix_precision" in job.argv
    mix = next(a for a in job.argv if a.startswith("--modify_mixlist="))
    mixfile = tmp_path / "om" / "tiny_mixlist.json"
    assert mix == f"--modify_mixlist={mixfile}"
    assert json.loads(job.side_files[mixfile]) == {"black-list": {"to-add": ["ReduceMeanD"]}}
    assert job.output == tmp_path / "om" / "tiny_ascend_bs2_Ascend310P3.om"


def test_om_name_carries_the_target_and_one_chip_spelling(tiny_spec, tmp_path):
    names = {atc.build_atc(tiny_spec, "m.onnx", tmp_path, chip=chip, batch=1).output.name
             for chip in ("310P3", "Ascend310P3", "ascend310p3")}
    assert names == {"tiny_ascend_bs1_Ascend310P3.om"}
    aoe = atc.build_aoe(tiny_spec, "m.onnx", tmp_path, chip="310p3", batch=1, tune="op")
    assert aoe.output.name == "tiny_ascend_bs1_Ascend310P3_aoe_op.om"
    with pytest.raises(ToolError, match="unknown TARGET 'onnx' .valid: ascend"):
        atc.build_atc(tiny_spec, "m.onnx", tmp_path, chip="310P3", batch=1, target="onnx")


def test_unsupported_batch(tiny_spec, tmp_path):
    with pytest.raises(ToolError, match="BATCH=4"):
        atc.build_atc(tiny_spec, "m.onnx", tmp_path, chip="310P3", batch=4)


def test_aoe_job_types(tiny_spec, tmp_path):
    assert "--job_type=1" in atc.build_aoe(tiny_spec, "m.onnx", tmp_path, chip="310", batch=1, tune="subgraph").argv
    assert "--job_type=2" in atc.build_aoe(tiny_spec, "m.onnx", tmp_path, chip="310", batch=1, tune="op").argv
    with pytest.raises(ToolError, match="valid: subgraph, op"):
        atc.build_aoe(tiny_spec, "m.onnx", tmp_path, chip="310", batch=1, tune="fast")


def _fake_tool(bin_dir, name, script):
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_missing_atc_prints_exact_command(tiny_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setattr(cann, "DEFAULT_SET_ENV", str(tmp_path / "none.sh"))
    job = atc.build_atc(tiny_spec, tmp_path / "m.onnx", tmp_path, chip="310P3", batch=1)
    with pytest.raises(ToolError, match="atc not found") as err:
        atc.run(job, tmp_path / "atc.log")
    assert err.value.detail == job.command
    assert "--soc_version=Ascend310P3" in err.value.detail


def test_runs_atc_with_set_env_and_reports_failure_tail(tiny_spec, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    # a CANN-like toolkit: set_env.sh puts atc on PATH; atc writes --output + .om like the real one
    _fake_tool(bin_dir, "atc", 'for a in "$@"; do case $a in --output=*) out=${a#--output=};; esac; done\n'
               'echo "ATC start working now"; touch "$out.om"; echo "ATC run success"\n')
    toolkit = tmp_path / "toolkit"
    toolkit.mkdir()
    (toolkit / "set_env.sh").write_text(f"export PATH={bin_dir}:$PATH\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(toolkit))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    job = atc.build_atc(tiny_spec, tmp_path / "m.onnx", tmp_path / "om", chip="310P3", batch=1)
    assert atc.run(job, tmp_path / "atc.log") == job.output
    assert job.output.exists() and (tmp_path / "om" / "tiny_mixlist.json").exists()
    assert "ATC run success" in (tmp_path / "atc.log").read_text()
    with pytest.raises(ToolError, match="already exists"):
        atc.run(job, tmp_path / "atc.log")

    _fake_tool(bin_dir, "atc", 'echo "E19999: Inner Error"; echo "ATC run failed"; exit 1\n')
    with pytest.raises(ToolError, match="atc failed with exit code 1") as err:
        atc.run(job, tmp_path / "atc2.log", force=True)
    assert "E19999" in err.value.detail
    assert os.path.exists(tmp_path / "atc2.log")


def test_printed_command_is_shell_safe_and_reads_like_the_recipes(tiny_spec, tmp_path):
    import shlex

    job = atc.build_atc(tiny_spec, tmp_path / "my model.onnx", tmp_path, chip="310P3", batch=1,
                        out_nodes=["dets", "labels"])
    assert '--out_nodes="dets;labels"' in job.command
    assert shlex.split(job.command) == job.argv  # pasting it into a shell gives the same argv


def _graph(path, outputs, shape=(1, 3, 32, 48), input_name="images"):
    """A stand-in export: ATC's flags depend only on its input (name, shape) and output names."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in outputs]
    nodes = [helper.make_node("Identity", [input_name], [n]) for n in outputs]
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(helper.make_graph(nodes, "g", [x], outs)), str(path))
    return path


def test_input_and_out_nodes_come_from_the_graph(tiny_spec, tmp_path):
    onnx_path = _graph(tmp_path / "m.onnx", ["out"], shape=(2, 3, 32, 48))
    assert atc.graph_io(tiny_spec, onnx_path, target="ascend", batch=2) == ("images", ["out"])
    dynamic = _graph(tmp_path / "dyn.onnx", ["out"], shape=("batch", 3, 32, 48))
    assert atc.graph_io(tiny_spec, dynamic, target="ascend", batch=1) == ("images", ["out"])


def test_graph_of_another_model_or_batch_is_refused(tiny_spec, tmp_path):
    wrong_outputs = _graph(tmp_path / "a.onnx", ["Cast_1673", "Gather_1676"])
    with pytest.raises(ToolError, match=r"has outputs Cast_1673, Gather_1676, expected out: .*re-export"):
        atc.graph_io(tiny_spec, wrong_outputs, target="ascend", batch=1)
    bs1 = _graph(tmp_path / "b.onnx", ["out"])
    with pytest.raises(ToolError, match=r"takes input 1x3x32x48, expected 2x3x32x48 for BATCH=2"):
        atc.graph_io(tiny_spec, bs1, target="ascend", batch=2)


def test_compile_om_before_export_shows_the_command(tiny_spec, tmp_path):
    with pytest.raises(ToolError, match=r"ONNX model .*m.onnx not found: run `make tiny-onnx BATCH=2` first") as err:
        atc.compile_om(tiny_spec, tmp_path / "m.onnx", tmp_path / "om", chip="310p3", batch=2)
    assert "--soc_version=Ascend310P3" in err.value.detail and "--out_nodes=out" in err.value.detail
    assert not (tmp_path / "om").exists()
