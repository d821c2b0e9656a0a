"""Hostile pipeline files are refused quickly with a clear message, and YAML tags never run code."""
from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from lightpipe.cli.main import main
from lightpipe.core.errors import PipelineError
from lightpipe.core.pipeline import load_pipeline
from lightpipe.core.yamlfile import MAX_DEPTH, MAX_FILE_BYTES, MAX_LINE_CHARS, MAX_NODES, LocatedYAML

HEADER = "version: 2\nname: hostile\nsource: {use: simulated_frames, params: {frames: 2, darks: 0, flats: 0}}\n"


def _alias_bomb() -> bytes:
    """Nine levels of nine aliases each: under 1 kB of text, 9**9 values if expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return (HEADER + "\n".join(lines) + "\n").encode()


def _binary() -> bytes:
    return random.Random(9).randbytes(4096) + b"\0"


HOSTILE: dict[str, tuple[bytes, str]] = {
    "binary garbage": (_binary(), "binary"),
    "latin-1 text": (HEADER.encode() + "description: Messung bei 8 keV, Probe \u00e9\n".encode("latin-1"),
                     "not UTF-8 text"),
    "truncated UTF-8": (HEADER.encode() + b"description: \xe2\x82\n", "not UTF-8 text"),
    "recursive alias": (b"name: &n [*n]\n", "refers to a node that contains it"),
    "alias bomb": (_alias_bomb(), f"more than {MAX_NODES} values"),
    "5000-deep lists": (("stages:\n  " + "[\n  " * 5000 + "]\n  " * 5000).encode(), f"more than {MAX_DEPTH} deep"),
    "deep mappings": ("".join(" " * i + f"k{i}:\n" for i in range(500)).encode(), f"more than {MAX_DEPTH} deep"),
    "one 2 MB line": (b"description: " + b"x" * (2 << 20) + b"\n", "larger than 1024 kB"),
    "long line": (HEADER.encode() + b"description: " + b"x" * (MAX_LINE_CHARS + 10) + b"\n",
                  f"more than the {MAX_LINE_CHARS}"),
    "huge file": (HEADER.encode() + b"#" * 70 + b"\n" + b"# padding\n" * (MAX_FILE_BYTES // 10), "larger than 1024 kB"),
    "many values": ((HEADER + "positions:\n" + "".join(f"- {i}\n" for i in range(MAX_NODES + 10))).encode(),
                    f"more than {MAX_NODES} values"),
    "python tag": (b"name: !!python/object/apply:os.system ['true']\n", "is not allowed"),
    "local tag": (b"name: !include other.yaml\n", "is not allowed"),
    "merge key": (b"base: &b {frames: 2}\nsource: {<<: *b}\n", "merge keys"),
    "two documents": (HEADER.encode() + b"---\nname: second\n", "more than one YAML document"),
    "duplicate key": (HEADER.encode() + b"name: again\n", "appears twice"),
    "unclosed list": (b"version: 2\nstages: [a, b\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_is_refused_within_a_second(case: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data, expected = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    seconds = time.perf_counter() - t0
    assert seconds < 1.0, f"{case}: refused only after {seconds:.2f} s"
    assert expected in str(info.value)
    assert str(path) in str(info.value)

    capsys.readouterr()
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("invalid") and expected in err and "Traceback" not in err and "bug" not in err

    assert main(["run", "--quiet", "--output", str(tmp_path / "out"), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_tags_never_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for text in (f"name: !!python/object/apply:os.system ['touch {marker}']\n",
                 f"name: !!python/object/apply:subprocess.call [[touch, '{marker}']]\n",
                 f"name: !!python/object/new:os.system ['touch {marker}']\n",
                 "name: !!python/name:os.system ''\n"):
        with pytest.raises(PipelineError, match="is not allowed"):
            LocatedYAML(text, "tags.yaml")
    assert not marker.exists()


def test_anchors_and_aliases_still_work_with_lines() -> None:
    doc = LocatedYAML("window: &w [96, 96]\nstages:\n  a:\n    shape: *w\n  b:\n    shape: *w\n", "w.yaml")
    assert doc.data == {"window": [96, 96], "stages": {"a": {"shape": [96, 96]}, "b": {"shape": [96, 96]}}}
    doc.data["stages"]["a"]["shape"].append(1)  # each alias is its own copy
    assert doc.data["stages"]["b"]["shape"] == [96, 96]
    assert doc.line(("stages", "b", "shape", 0)) == 6
    assert doc.line(("stages", "a")) == 3


def test_plain_yaml_values_are_read_as_before() -> None:
    text = "a: 1\nb: 2.5e-4\nc: [true, null, '3']\nd: {e: f}\ne: 0x10\n"
    assert LocatedYAML(text).data == {"a": 1, "b": 2.5e-4, "c": [True, None, "3"], "d": {"e": "f"}, "e": 16}


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + HEADER.encode() + b"sinks: [{use: nexus, fields: [source.frame]}]\n")
    assert load_pipeline(path).name == "hostile"


def test_a_pipeline_file_without_yaml_suffix_is_read_as_a_file(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pipeline.txt"
    path.write_bytes(_binary())
    assert main(["validate", str(path)]) == 1
    assert "binary" in capsys.readouterr().err
