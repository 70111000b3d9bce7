"""``fetalhc.report.provenance``: first differing field, the folder check (resume, refuse,
``--overwrite`` that never deletes a foreign folder), digests of models and index rows."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from fetalhc.report.provenance import (
    PROVENANCE_FILE,
    ProvenanceError,
    check_folder,
    check_folder_settings_first,
    first_difference,
    image_keys,
    index_digest,
    make_provenance,
    method_options,
    model_digest,
    plain_options,
    read_provenance,
    without_shard,
    write_provenance,
)


# ----------------------------------------------------------------------------- first_difference
def test_first_difference_names_the_first_field_in_sorted_order():
    assert first_difference({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}) is None
    assert first_difference({"b": 1, "a": 1}, {"b": 2, "a": 2}) == ("a", 1, 2)
    assert first_difference({"m": {"x": {"steps": 8}}}, {"m": {"x": {"steps": 4}}}) == \
        ("m.x.steps", 8, 4)
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", "(absent)", 2)
    assert first_difference({"a": 1, "b": 2}, {"a": 1}) == ("b", 2, "(absent)")
    assert first_difference({"k": [[1, "a"], [2, "b"]]}, {"k": [[1, "a"], [2, "c"]]}) == \
        ("k[1][1]", "b", "c")
    assert first_difference({"k": [1, 2]}, {"k": [1, 2, 3]}) == ("k", [1, 2], [1, 2, 3])
    assert first_difference(1, 2) == ("(record)", 1, 2)
    assert first_difference({"a": None}, {"a": 0}) == ("a", None, 0)


# ----------------------------------------------------------------------------- check_folder
def _record(**result):
    return make_provenance("explain", {"target": "hc_mm", "split": "test", **result},
                           {"where": "here"})


def test_check_folder_fresh_same_and_different(tmp_path):
    folder = tmp_path / "out"
    record = _record()
    assert check_folder(folder, record) is False and not folder.exists()  # not created
    folder.mkdir()
    assert check_folder(folder, record) is False  # empty
    write_provenance(folder, record)
    (folder / "index.csv").write_text("x\n")
    later = make_provenance("explain", record["result"], {"where": "elsewhere"})
    assert check_folder(folder, later) is True  # info is recorded, not compared
    with pytest.raises(ProvenanceError, match=r"another target \('hc_mm' there, "
                                              r"'hc_px_input' now\); use --overwrite"):
        check_folder(folder, _record(target="hc_px_input"))
    with pytest.raises(ProvenanceError, match="holds 'explain' results, not 'evaluate'"):
        check_folder(folder, make_provenance("evaluate", record["result"]))
    assert (folder / "index.csv").read_text() == "x\n"  # nothing changed by a refusal
    assert read_provenance(folder)["result"] == record["result"]
    message = None
    try:
        check_folder(folder, _record(target="hc_px_input"), flag="--again")
    except ProvenanceError as error:
        message = str(error)
    assert message is not None and "\n" not in message and "--again" in message


def test_check_folder_without_provenance_and_overwrite(tmp_path):
    record = _record()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(ProvenanceError, match="has no provenance.json"):
        check_folder(foreign, record)
    assert check_folder(foreign, record, ignore=("thesis.tex",)) is False
    # --overwrite never deletes a folder that is not a fetalhc output folder
    with pytest.raises(ProvenanceError, match="refusing to delete it for --overwrite"):
        check_folder(foreign, record, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "years of work"

    ours = tmp_path / "ours"
    ours.mkdir()
    write_provenance(ours, _record(target="hc_px_input"))
    (ours / "old.npz").write_bytes(b"x")
    assert check_folder(ours, record, overwrite=True) is False and not ours.exists()

    marked = tmp_path / "older_fetalhc"  # no provenance.json, but the command's own files
    marked.mkdir()
    (marked / "index.csv").write_text("x\n")
    assert check_folder(marked, record, overwrite=True, markers=("index.csv",)) is False
    assert not marked.exists()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ProvenanceError, match="is not a folder"):
        check_folder(a_file, record)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / PROVENANCE_FILE).write_text("{not json")
    with pytest.raises(ProvenanceError, match="not valid JSON"):
        check_folder(broken, record)


def test_check_folder_settings_first_names_the_setting_not_its_digest(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    write_provenance(folder, _record(index="sha256:aaa", image_keys=[["test_set", "1.png"]]))
    changed = _record(split="train", index="sha256:bbb", image_keys=[["training_set", "1.png"]])
    with pytest.raises(ProvenanceError, match="another image_keys"):
        check_folder(folder, changed)
    with pytest.raises(ProvenanceError, match=r"another split \('test' there, 'train' now\)"):
        check_folder_settings_first(folder, changed, ("index", "image_keys"))
    # the data changed under the same settings: the digest is named
    same_settings = _record(index="sha256:ccc", image_keys=[["test_set", "1.png"]])
    with pytest.raises(ProvenanceError, match="another index"):
        check_folder_settings_first(folder, same_settings, ("index", "image_keys"))
    again = _record(index="sha256:aaa", image_keys=[["test_set", "1.png"]])
    assert check_folder_settings_first(folder, again, ("index", "image_keys")) is True
    assert check_folder_settings_first(folder, changed, ("index",), overwrite=True) is False


# ----------------------------------------------------------------------------- digests
def test_model_digest_of_a_file_and_of_an_in_memory_model(tmp_path):
    import keras

    from fetalhc.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", input_shape=(32, 32, 1), hc_mean_px=60.0, hc_std_px=10.0)
    path = tmp_path / "m.keras"
    model.save(path)
    assert model_digest(path) == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert model_digest(str(path)) == model_digest(path)

    in_memory = model_digest(model)
    assert in_memory.startswith("sha256-weights:") and in_memory != model_digest(path)
    assert model_digest(model) == in_memory  # stable
    assert model_digest(keras.models.load_model(path)) == in_memory  # the same weights
    weights = model.get_weights()
    weights[-1] = weights[-1] + np.float32(1e-3)
    model.set_weights(weights)
    assert model_digest(model) != in_memory

    model.save(path)  # another model at the same path: another file digest
    assert model_digest(path) == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def test_index_digest_and_image_keys_follow_the_rows_and_the_image_bytes(tmp_path):
    for folder in ("training_set", "test_set"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "000_HC.png").write_bytes(folder.encode())

    def index(folder):
        return pd.DataFrame({"image_path": [str(tmp_path / folder / "000_HC.png")],
                             "filename": ["000_HC.png"], "pixel_size_mm": [0.1],
                             "hc_mm": [np.nan]})

    train, test = index("training_set"), index("test_set")
    assert image_keys(train) == [["training_set", "000_HC.png"]]
    assert image_keys(test) == [["test_set", "000_HC.png"]]
    assert index_digest(train) != index_digest(test)  # same name, other set and bytes
    before = index_digest(test)
    assert index_digest(test) == before
    (tmp_path / "test_set" / "000_HC.png").write_bytes(b"other bytes, other size")
    assert index_digest(test) != before
    assert index_digest(test.assign(pixel_size_mm=0.2)) != index_digest(test)


# ----------------------------------------------------------------------------- helpers
def test_method_options_plain_options_and_without_shard():
    options = method_options("integrated_gradients", {"steps": 4})
    assert options["steps"] == 4 and options["baseline"] == "zeros"  # defaults filled in
    assert json.loads(json.dumps(options)) == options
    assert method_options("gradient") == {}
    with pytest.raises(ValueError, match="unknown option"):
        method_options("gradient", {"steps": 3})
    baseline = np.ones((8, 8, 1), np.float32)
    plain = plain_options({"baseline": baseline, "pair": (1, 2), "n": np.int64(3)})
    assert plain["pair"] == [1, 2] and plain["n"] == 3
    assert plain["baseline"]["array"] == [8, 8, 1]
    assert plain["baseline"] == plain_options({"baseline": baseline.copy()})["baseline"]
    assert plain["baseline"] != plain_options({"baseline": baseline * 2})["baseline"]
    assert without_shard({"shard": "1/2", "model": "m"}) == {"model": "m"}
