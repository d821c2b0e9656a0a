"""``--input PATH`` goes to the source that says it reads PATH best (each source's ``can_open``)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from lightpipe.cli.main import main
from lightpipe.core.errors import SourceError
from lightpipe.core.source import source_for_input, sources_for

ROOT = Path(__file__).parents[1]


def test_a_cxi_file_goes_to_the_cxi_source_not_plain_hdf5(tmp_path: Path) -> None:
    from lightpipe.techniques.ptychography.cxi import write_simulation_cxi
    from lightpipe.techniques.ptychography.simulate import PtychoSimParams

    path = write_simulation_cxi(tmp_path / "scan.cxi", PtychoSimParams(name="scan", frame_shape=(32, 32), distance_m=0.5, defocus_m=1e-4, n_positions=12))
    ranked = [name for _, name, _ in sources_for(str(path))]
    assert ranked[:2] == ["cxi", "hdf5"]
    assert source_for_input(str(path), "hdf5", {"path": "x.h5", "dataset": "/d"}) == ("cxi", {"path": str(path)})
    renamed = path.rename(tmp_path / "scan.h5")  # the file says it is CXI whatever its name
    assert sources_for(str(renamed))[0][1] == "cxi"


def test_the_pipelines_own_source_keeps_its_parameters_when_it_reads_best(nxmx_file: Path) -> None:
    use, params = source_for_input(str(nxmx_file), "hdf5", {"path": "old.h5", "dataset": "/entry/x", "dark": None})
    assert use == "hdf5" and params["path"] == str(nxmx_file)
    assert (params["dataset"], params["dark"]) == ("/entry/x", None)  # what the pipeline sets, even to none, stays
    assert params["flat"] == "/entry/flat/data"  # what it leaves unset comes from the file
    use, params = source_for_input(str(nxmx_file), "hdf5", {"path": "replaced.h5"})  # as the demo pipeline has it
    assert params["dark"] == "/entry/dark/data" and params["scalars"] == {"monitor": "/entry/data/monitor"}
    use, params = source_for_input(str(nxmx_file), "simulated_frames", {"frames": 3})
    assert use == "hdf5" and params["path"] == str(nxmx_file) and params["dark"] == "/entry/dark/data"


def test_hdf5_under_another_name_is_recognised_by_its_signature(tmp_path: Path) -> None:
    path = tmp_path / "scan.dat"
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = np.zeros((2, 4, 4), np.uint16)
    assert sources_for(str(path))[0][1] == "hdf5"
    (tmp_path / "notes.dat").write_text("not a detector file")
    assert sources_for(str(tmp_path / "notes.dat")) == []


def test_nothing_reads_it_says_which_sources_read_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"no source can read .*notes.txt.*sources that read files: .*hdf5"):
        source_for_input(str(tmp_path / "notes.txt"), "simulated_frames", {})
    assert main(["run", str(ROOT / "pipelines" / "dark-flat-correction.yaml"), "--input",
                 str(tmp_path / "notes.txt"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "no source can read" in capsys.readouterr().err
