"""The per-machine measurement cache (engine.core.measured)."""
import json

from medfake.engine.core import measured


def test_roundtrip_is_keyed_by_kind_model_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path))
    assert measured.load_measured("backend", "abc", {"batch": 2}) is None
    measured.save_measured("backend", "abc", {"batch": 2}, {"pick": "onnx"})
    assert measured.load_measured("backend", "abc", {"batch": 2}) == {"pick": "onnx"}
    assert measured.load_measured("backend", "abc", {"batch": 4}) is None
    assert measured.load_measured("backend", "other", {"batch": 2}) is None
    assert measured.load_measured("streams", "abc", {"batch": 2}) is None


def test_corrupt_or_foreign_entries_read_as_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFAKE_CACHE", str(tmp_path))
    measured.save_measured("backend", "abc", {}, {"pick": "onnx"})
    (entry,) = (tmp_path / "measured" / "backend").glob("*.json")
    entry.write_text("{not json")
    assert measured.load_measured("backend", "abc", {}) is None
    other = measured.machine_id() | {"cpu": "another machine"}
    entry.write_text(json.dumps({"id": {"kind": "backend", "model": "abc", "machine": other,
                                        "key": {}}, "result": {"pick": "torch"}}))
    assert measured.load_measured("backend", "abc", {}) is None


def test_machine_id_names_cpu_cores_and_runtimes():
    mid = measured.machine_id()
    assert mid["cores"] >= 1 and mid["cpu"]
    assert mid["runtimes"]["torch"]
