"""Pipelines are checked before anything runs; each error names file, line and field."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lightpipe import PipelineError, load_pipeline
from lightpipe.core.errors import PipelineErrors
from lightpipe.core.plan import ExecutionPlan

GOOD = """\
version: 2
name: t
source:
  use: simulated_frames
  params: {frames: 4, darks: 2, flats: 0, shape: [16, 16]}
stages:
  dark:
    use: dark_statistics
    stream: dark
  corrected:
    use: dark_correction
    inputs: {frame: source.frame, dark: dark.mean, mask: dark.mask}
  roi:
    use: roi_sum
    params: {y: [0, 8], x: [0, 8]}
sinks:
  - use: nexus
    fields: [corrected.frame, roi.sum, dark.mean]
"""


def _error(tmp_path: Path, text: str) -> PipelineError:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    return info.value


def test_good_pipeline_loads_and_plans() -> None:
    p = load_pipeline(GOOD, file="good.yaml")
    assert list(p.stages) == ["dark", "corrected", "roi"]
    assert p.stages["roi"].inputs == {"frame": "corrected.frame"}  # the latest 'frame' producer
    passes = ExecutionPlan(p).passes
    assert [sorted(pp.streams) for pp in passes] == [["dark"], ["data"]]
    assert passes[1].maps["data"] == ("corrected", "roi") and passes[1].feeds_sinks


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        ("use: roi_sum", "use: roi_summ", 14, "stages.roi.use", "unknown stage 'roi_summ'"),
        ("params: {y: [0, 8], x: [0, 8]}", "params: {y: [0, 8], x: [0, 8], z: 1}", 15, "stages.roi.params.z",
         "unknown field 'z'"),
        ("params: {y: [0, 8], x: [0, 8]}", "params: {y: [0, 8], x: [0, oops]}", 15, "stages.roi.params.x.1",
         "valid integer"),
        ("dark: dark.mean,", "dark: dark.average,", 12, "stages.corrected.inputs.dark", "'dark.average' is not produced"),
        ("dark: dark.mean,", "dark: source.frame,", 12, "stages.corrected.inputs.dark", "expects dtype float"),
        ("    fields: [corrected.frame, roi.sum, dark.mean]", "    fields: [corrected.frame, roi.total]", 18,
         "sinks.0.fields.1", "'roi.total' is not produced"),
        ("  params: {frames: 4,", "  params: {frames: -4,", 5, "source.params.frames", "greater than or equal to 0"),
        ("version: 2", "version: 7", 1, "version", "newer than this lightpipe"),
        ("    stream: dark\n", "    stream: dark\n    colour: blue\n", 10, "stages.dark.colour", "unknown field 'colour'"),
    ],
)
def test_each_error_names_file_line_and_field(tmp_path: Path, old: str, new: str, line: int, field: str, words: str) -> None:
    assert old in GOOD
    err = _error(tmp_path, GOOD.replace(old, new, 1))
    assert err.file == str(tmp_path / "p.yaml")
    assert (err.line, err.field) == (line, field), str(err)
    assert words in str(err)
    assert str(err).startswith(f"{tmp_path / 'p.yaml'}:{line}: {field}: ")


def test_input_on_wrong_stream_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  roi:\n    use: roi_sum\n", "  roi:\n    use: roi_sum\n    stream: dark\n")
    err = _error(tmp_path, text)
    assert "exists only on streams ['data']" in str(err) and err.field == "stages.roi.inputs.frame"


def test_reference_to_a_later_stage_says_move_it_up(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("inputs: {frame: source.frame, dark: dark.mean", "inputs: {frame: roi.sum, dark: dark.mean"))
    assert err.field == "stages.corrected.inputs.frame" and "comes after 'corrected'" in str(err)


def test_sink_field_on_another_stream_is_refused(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("    fields: [corrected.frame, roi.sum, dark.mean]",
                                        "    stream: dark\n    fields: [corrected.frame, dark.mean]"))
    assert err.field == "sinks.0.fields.0" and "exists only on streams ['data']" in str(err)


def test_default_sink_fields_are_the_stage_outputs() -> None:
    p = load_pipeline(GOOD.replace("    fields: [corrected.frame, roi.sum, dark.mean]\n", ""))
    assert p.sinks[0].fields == ["dark.mean", "dark.std", "dark.mask", "dark.count", "corrected.frame",
                                 "roi.sum", "roi.mean", "roi.max"]


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("use: roi_sum", "use: nope").replace("max_std", "x").replace(
        "use: dark_correction", "use: dark_correctoin"))
    assert isinstance(err, PipelineErrors) and len(err.errors) == 2
    assert {e.field for e in err.errors} == {"stages.roi.use", "stages.corrected.use"}


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("  params: {frames: 4,", "  params: {frames: [4,"))
    assert err.line == 5 and "not valid YAML" in str(err)


def test_missing_file_and_missing_version(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="pipeline file not found"):
        load_pipeline(tmp_path / "nope.yaml")
    err = _error(tmp_path, GOOD.replace("version: 2\n", ""))
    assert err.field == "version" and "version: 2" in str(err)


def test_module_class_reference_is_accepted() -> None:
    p = load_pipeline(GOOD.replace("use: roi_sum", "use: lightpipe.stages.scalars:RoiSum"))
    assert p.stages["roi"].cls.name == "roi_sum"
    with pytest.raises(PipelineError, match="cannot import module"):
        load_pipeline(GOOD.replace("use: roi_sum", "use: no_such_pkg.mod:Stage"))


def test_scan_metadata_inputs_are_side_inputs_of_the_first_pass(tmp_path: Path) -> None:
    text = GOOD.replace("inputs: {frame: source.frame, dark: dark.mean, mask: dark.mask}",
                        "inputs: {frame: source.frame, dark: dark.mean, mask: scan.pixel_mask}")
    pipeline = load_pipeline(text)
    assert pipeline.stages["corrected"].inputs["mask"] == "scan.pixel_mask"
    dark_pass, data_pass = ExecutionPlan(pipeline).passes  # the mask comes with the scan: no pass of its own
    assert "scan.pixel_mask" in data_pass.side_inputs and "dark.mean" in data_pass.side_inputs
    # a stage may not take the name that scan-metadata references use
    err = _error(tmp_path, GOOD.replace("  roi:\n", "  scan:\n"))
    assert "stage name 'scan' is reserved" in str(err)


def test_a_version_1_file_is_upgraded_and_its_detector_window_dropped() -> None:
    doc = {"version": 1, "name": "old", "source": {"use": "ptycho_sim", "params": {"n_positions": 16}},
           "stages": {"probe": {"use": "initial_probe", "params": {"detector_window_px": [64, 64]}}}}
    pipeline = load_pipeline(doc)
    assert pipeline.document["version"] == 2
    assert "detector_window_px" not in pipeline.document["stages"]["probe"]["params"]
    assert doc["stages"]["probe"]["params"] == {"detector_window_px": [64, 64]}  # the caller's dict is left alone


@pytest.mark.parametrize(("section", "wrong"), [
    ("source", "lightpipe.stages.identity:Identity"),
    ("sink", "lightpipe.sources.hdf5:HDF5Source"),
    ("stage", "lightpipe.sinks.nexus:NexusSink"),
])
def test_a_plugin_of_the_wrong_kind_is_refused_with_its_contract(section: str, wrong: str) -> None:
    text = {"source": GOOD.replace("use: simulated_frames", f"use: {wrong}"),
            "sink": GOOD.replace("use: nexus", f"use: {wrong}"),
            "stage": GOOD.replace("use: roi_sum", f"use: {wrong}")}[section]
    contract = {"source": "Source", "sink": "Sink", "stage": "Stage"}[section]
    with pytest.raises(PipelineError, match=rf"{wrong}' is not a lightpipe {contract} subclass.*lightpipe\.core\.") as info:
        load_pipeline(text)
    assert info.value.field == {"source": "source.use", "sink": "sinks.0.use", "stage": "stages.roi.use"}[section]


@pytest.mark.parametrize(("stage", "params", "expected"), [
    ("crop", "{y: [0, 8], x: [10, 40]}", "x=[10, 40] reaches past the frame's 32 pixels"),
    ("roi_sum", "{y: [20, 33], x: [0, 8]}", "y=[20, 33] reaches past the frame's 24 pixels"),
    ("fft_downsample", "{shape: [16, 64]}", "larger than the 24 x 32 frame"),
    ("centred_crop", "{shape: [30, 30]}", "larger than the 24 x 32 frame"),
    ("bin", "{factor: 25}", "factor 25 is larger than the 24 x 32 frame"),
])
def test_a_region_outside_the_simulated_frames_is_refused_at_load(stage: str, params: str, expected: str,
                                                                  tmp_path: Path) -> None:
    text = GOOD.replace("shape: [16, 16]", "shape: [24, 32]").replace(
        "    use: roi_sum\n    params: {y: [0, 8], x: [0, 8]}", f"    use: {stage}\n    params: {params}").replace(
        "    fields: [corrected.frame, roi.sum, dark.mean]\n", "")  # every stage output: the stage runs
    err = _error(tmp_path, text)
    assert expected in str(err) and "(the source's frames are 24 x 32)" in str(err)
    assert err.field == "stages.roi.params" and err.line == 15


@pytest.mark.parametrize(("params", "expected"), [
    ("{y: [8, 2], x: [0, 8]}", "[8, 2] is empty or reversed"),
    ("{y: [-1, 2], x: [0, 8]}", "greater than or equal to 0"),
    ("{y: [0, 8], x: [0, 9223372036854775808]}", "less than or equal to 65536"),
])
def test_a_reversed_or_negative_region_is_refused(params: str, expected: str, tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("{y: [0, 8], x: [0, 8]}", params))
    assert expected in str(err) and "Value error" not in str(err)


def test_a_region_is_checked_only_on_a_stage_that_runs(tmp_path: Path) -> None:
    unused = GOOD.replace("{y: [0, 8], x: [0, 8]}", "{y: [0, 8], x: [0, 99]}").replace("roi.sum, ", "")
    assert "roi" not in load_pipeline(unused).running_stages()


def test_a_pipeline_that_writes_nothing_is_refused(tmp_path: Path) -> None:
    no_sinks = GOOD[: GOOD.index("sinks:")] + "sinks: []\n"
    assert "has no sinks, so a run would write nothing" in str(_error(tmp_path, no_sinks))
    empty = GOOD.replace("fields: [corrected.frame, roi.sum, dark.mean]", "fields: []")
    assert "receives no fields" in str(_error(tmp_path, empty))
    # from Python, a pipeline without sinks is fine: its results are in the run's report
    assert load_pipeline(yaml.safe_load(no_sinks)).sinks == []


def test_a_region_outside_the_frames_fails_the_scan_clearly_when_only_the_data_tell(tmp_path: Path) -> None:
    from lightpipe.core.event import Scan
    from lightpipe.core.errors import StageError

    pipeline = load_pipeline(GOOD.replace("{y: [0, 8], x: [0, 8]}", "{y: [0, 8], x: [0, 12]}"))
    scan = Scan(name="s", streams={"data": range(4)}, metadata={"frame_shape": [16, 10]})
    with pytest.raises(StageError, match=r"stage 'roi' \(roi_sum\) does not fit the frames of scan 's': "
                                         r"x=\[0, 12\] reaches past the frame's 10 pixels"):
        pipeline.start_stage("roi", scan)
    assert pipeline.frame_problems((16, 10)) == {"roi": "x=[0, 12] reaches past the frame's 10 pixels along x; "
                                                        "keep it within [0, 10]"}
    assert pipeline.start_stage("roi", Scan(name="s", streams={"data": range(4)}, metadata={"frame_shape": [16, 16]})) is not None


@pytest.mark.parametrize(("old", "new", "field", "expected"), [
    # the pipeline spec
    ("sinks:", "engine: {chunk_size: 9223372036854775808}\nsinks:", "engine.chunk_size", "less than or equal to 100000"),
    ("sinks:", "engine: {chunk_seconds: .inf}\nsinks:", "engine.chunk_seconds", "finite number"),
    ("    stream: dark\n", "    stream: dark\n    buffer: {capacity: 0}\n", "stages.dark.buffer.capacity",
     "greater than or equal to 1"),
    # sources
    ("  use: simulated_frames\n  params: {frames: 4, darks: 2, flats: 0, shape: [16, 16]}",
     "  use: eiger\n  params: {endpoint: 'eiger-dcu:9999'}", "source.params.endpoint", "give tcp://host:port"),
    ("  use: simulated_frames\n  params: {frames: 4, darks: 2, flats: 0, shape: [16, 16]}",
     "  use: eiger\n  params: {end_timeout_s: -1}", "source.params.end_timeout_s", "greater than 0"),
    ("  use: simulated_frames\n  params: {frames: 4, darks: 2, flats: 0, shape: [16, 16]}",
     "  use: folder\n  params: {path: raw, poll_s: 1.0e+308}", "source.params.poll_s", "less than or equal to 604800"),
    ("  use: simulated_frames\n  params: {frames: 4, darks: 2, flats: 0, shape: [16, 16]}",
     "  use: hdf5\n  params: {path: ''}", "source.params.path", "at least 1 character"),
    ("  use: simulated_frames\n  params: {frames: 4, darks: 2, flats: 0, shape: [16, 16]}",
     "  use: image_series\n  params: {path: 'raw/*.cbf', name: ../elsewhere}", "source.params.name", "match pattern"),
    # sinks
    ("    fields: [corrected.frame, roi.sum, dark.mean]\n",
     "    fields: [corrected.frame, roi.sum, dark.mean]\n    params: {filename: '../../{scan}.nxs'}\n",
     "sinks.0.params.filename", "must be one file name in the output folder"),
    ("sinks:\n", "sinks:\n  - use: lavue\n    params: {port: 65536}\n", "sinks.0.params.port", "less than or equal to 65535"),
    ("sinks:\n", "sinks:\n  - use: command\n    params: {command: ls, timeout_s: 0}\n", "sinks.0.params.timeout_s",
     "greater than 0"),
    ("sinks:\n", "sinks:\n  - use: preview\n    params: {directory: '{scan:>999999999}'}\n",
     "sinks.0.params.directory", "a width in the format of a placeholder is over 255"),
])
def test_sizes_times_ports_and_names_out_of_bounds_are_refused(old: str, new: str, field: str, expected: str,
                                                               tmp_path: Path) -> None:
    assert old in GOOD
    err = _error(tmp_path, GOOD.replace(old, new, 1))
    assert err.field == field and expected in str(err), str(err)


@pytest.mark.parametrize(("engine", "options", "expected"), [
    ("local", {"workers": 10**6}, "less than or equal to 10000"),
    ("dask", {"cluster": "tcp://scheduler:99999"}, "neither a scheduler address"),
    ("dask", {"retries": -1}, "greater than or equal to 0"),
])
def test_engine_options_out_of_bounds_are_refused_with_the_option(engine: str, options: dict[str, object],
                                                                  expected: str) -> None:
    from pydantic import ValidationError

    from lightpipe.core import registry

    with pytest.raises(ValidationError) as info:
        registry.load("engines", engine).from_options(options)
    assert info.value.errors()[0]["loc"] == (next(iter(options)),) and expected in str(info.value)


def test_a_source_that_fails_to_load_gives_one_error_not_one_per_stage(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "pipelines" / "beam-spot.yaml").read_text()
    bad = re.sub(r"shape: \[\d+, \d+\]", "shape: [-4, 16]", text, count=1)
    assert bad != text
    with pytest.raises(PipelineError) as info:
        load_pipeline(bad)
    assert not isinstance(info.value, PipelineErrors)  # stages reading the source are not reported as well
    assert info.value.field == "source.params.shape.0" and "greater than or equal to 1" in str(info.value)


def test_an_optional_input_left_unconnected_takes_the_stages_default(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    from lightpipe.engines.local import LocalEngine

    def run(inputs: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        doc = {"version": 2, "name": "optional", "source": {"use": "simulated_frames",
                                                            "params": {"frames": 3, "shape": [16, 16]}},
               "stages": {"scaled": {"use": "stages_for_tests:ScaleFrame", "inputs": inputs}},
               "sinks": [{"use": "nexus", "fields": ["scaled.frame", "source.frame", "source.monitor"]}]}
        pipeline = load_pipeline(doc)
        assert set(pipeline.stages["scaled"].inputs) == set(inputs)  # nothing named gain: left out
        out = tmp_path / "-".join(inputs)
        with LocalEngine() as engine:
            engine.run(pipeline, out)
        with h5py.File(next(out.glob("*.nxs"))) as f:
            return tuple(f[f"entry/{n}"][()] for n in ("scaled/frame", "source/frame", "source/monitor"))

    scaled, frame, _ = run({"frame": "source.frame"})
    np.testing.assert_array_equal(scaled, frame)
    scaled, frame, monitor = run({"frame": "source.frame", "gain": "source.monitor"})
    assert not np.allclose(monitor, 1.0)
    np.testing.assert_allclose(scaled, frame * monitor[:, None, None])
    # a required input left unconnected is still refused
    err = _error(tmp_path, GOOD.replace("inputs: {frame: source.frame, dark: dark.mean, mask: dark.mask}",
                                        "inputs: {frame: source.frame, mask: dark.mask}"))
    assert "input 'dark'" in str(err) and "is not connected" in str(err)
