"""Dataset preparation: TFDS (built offline here), image folder, CSV, hierarchies."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from data import hierarchy, manifest, pipeline, prepare, records
from tests import tfds_testlib
from tests.tfds_testlib import png as _png


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tfds_testlib.build(tmp_path_factory)


def _records(shard_set):
    return [records.decode_example(r) for f in shard_set.files for r in records.iter_records(f)]


def test_tfds_conversion_offline(tfds_dir, tmp_path):
    out = str(tmp_path / "pets")
    prepare.main(["tfds", "--name=tiny_pets_for_test", f"--data-dir={tfds_dir}", f"--out={out}", "--num-shards=2"])
    train = manifest.load_manifest(os.path.join(out, "train"))
    test = manifest.load_manifest(os.path.join(out, "test"))
    assert (train.num_records, test.num_records) == (7, 3)
    assert train.label_names == ["cat", "dog", "fox"] and train.record_counts == [3, 4]
    examples = _records(train)
    by_name = {e.example_id.decode().rsplit("/", 1)[1]: e for e in examples}
    assert sorted(by_name) == [f"img{i}.png" for i in range(7)]
    for i in range(7):
        e = by_name[f"img{i}.png"]
        assert e.image == _png(i) and e.labels == (i % 3,)  # bytes copied, not re-encoded
        assert e.example_id == f"tiny_pets_for_test/train/img{i}.png".encode()
    assert train.label_counts == [3, 2, 2]
    assert train.extra["prepared_from"]["tfds"] == "tiny_pets_for_test"
    batch = next(pipeline.eval_batches(os.path.join(out, "test"), global_batch_size=3, image_size=5, num_classes=3))
    assert batch["mask"].all() and batch["image"].shape == (3, 5, 5, 3)


def test_tfds_multi_label_and_split_spec(tfds_dir, tmp_path):
    shard_set = prepare.convert_tfds(
        "tiny_pets_for_test", str(tmp_path / "ml"), split="train[:4]", data_dir=tfds_dir, label_key="labels"
    )
    assert shard_set.num_records == 4
    for e in _records(shard_set):  # TFDS shuffled at preparation: check each against its id
        i = int(e.example_id.decode().rsplit("img", 1)[1].split(".")[0])
        assert e.labels == (i % 3, (i + 1) % 3)


def test_tfds_not_prepared_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        prepare.convert_tfds("tiny_pets_for_test", str(tmp_path / "o"), data_dir=str(tmp_path / "empty"))


def test_image_folder(tmp_path):
    root = tmp_path / "images"
    jpeg = io.BytesIO()
    Image.new("RGB", (10, 8), (1, 2, 3)).save(jpeg, format="JPEG")
    files = {"b_class/x.jpg": jpeg.getvalue(), "a_class/1.png": _png(1), "a_class/sub/2.png": _png(2)}
    bmp = io.BytesIO()
    Image.new("L", (4, 4), 9).save(bmp, format="BMP")
    files["b_class/y.bmp"] = bmp.getvalue()
    files["b_class/notes.txt"] = b"ignored"
    for rel, data in files.items():
        os.makedirs(os.path.dirname(root / rel), exist_ok=True)
        (root / rel).write_bytes(data)
    shard_set = prepare.convert_image_folder(str(root), str(tmp_path / "out"), num_shards=3)
    assert shard_set.label_names == ["a_class", "b_class"] and shard_set.record_counts == [1, 1, 2]
    got = {e.example_id.decode(): e for e in _records(shard_set)}
    assert set(got) == {"a_class/1.png", "a_class/sub/2.png", "b_class/x.jpg", "b_class/y.bmp"}
    assert got["b_class/x.jpg"].image == jpeg.getvalue() and got["b_class/x.jpg"].labels == (1,)
    assert got["b_class/y.bmp"].image.startswith(b"\x89PNG")  # re-encoded: readers see PNG/JPEG only
    assert shard_set.label_counts == [2, 2]


def test_image_folder_unreadable_image_names_file(tmp_path):
    (tmp_path / "r" / "c").mkdir(parents=True)
    (tmp_path / "r" / "c" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad.jpg: unreadable image"):
        prepare.convert_image_folder(str(tmp_path / "r"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / manifest.MANIFEST_NAME)


def test_csv_multi_label_with_hierarchy_and_skip_when_done(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    (tmp_path / "labels.csv").write_text(
        "path,label\n0.png,sparrow\n1.png,hawk;sparrow\n2.png,hawk\n3.png,trout\n4.png,sparrow\n"
    )
    tree = {"animal": ["bird", "fish"], "bird": ["sparrow", "hawk"], "fish": ["trout"]}
    (tmp_path / "tree.json").write_text(json.dumps(tree))
    out = str(tmp_path / "out")
    prepare.main(["csv", f"--csv={tmp_path / 'labels.csv'}", f"--out={out}", f"--hierarchy={tmp_path / 'tree.json'}"])
    shard_set = manifest.load_manifest(out)
    assert shard_set.label_names == ["hawk", "sparrow", "trout"] and shard_set.label_counts == [2, 3, 1]
    assert shard_set.hierarchy == tree
    assert [e.labels for e in _records(shard_set)] == [(1,), (0, 1), (0,), (2,), (1,)]
    mtime = os.path.getmtime(os.path.join(out, manifest.MANIFEST_NAME))
    prepare.convert_csv(str(tmp_path / "labels.csv"), out)  # finished: left alone
    assert os.path.getmtime(os.path.join(out, manifest.MANIFEST_NAME)) == mtime
    (tmp_path / "bad.csv").write_text("0.png,eagle\n")
    with pytest.raises(ValueError, match="unknown labels"):
        prepare.convert_csv(str(tmp_path / "bad.csv"), str(tmp_path / "o2"), label_names=["hawk"])


def test_hierarchy_helpers(tmp_path):
    tree = {"animal": ["bird", "fish"], "bird": ["sparrow", "hawk"], "fish": ["trout"]}
    assert hierarchy.descendants(tree, "animal") == {"bird", "fish", "sparrow", "hawk", "trout"}
    assert hierarchy.labels_under(tree, "bird", ["hawk", "sparrow", "trout"]) == [0, 1]
    assert hierarchy.ancestors(tree, "trout") == {"fish", "animal"}
    with pytest.raises(ValueError, match="cycle"):
        hierarchy.validate({"a": ["b"], "b": ["a"]})
    wnids = hierarchy.imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764"
    is_a = tmp_path / "wordnet.is_a.txt"
    is_a.write_text("n0 n1\nn1 n01440764\nn1 n01443537\nn0 n9\nn9 n8\n")
    assert hierarchy.wordnet_hierarchy(wnids[:2], str(is_a)) == {"n0": ["n1"], "n1": ["n01440764", "n01443537"]}


def test_shards_are_even_and_atomic(tmp_path):
    out = str(tmp_path / "s")
    os.makedirs(out)
    open(os.path.join(out, "data-00000-of-00009.tfrecord.tmp"), "wb").write(b"half")  # an interrupted run
    shard_set = prepare.write_shard_set(
        out, 10, lambda i: records.Example(_png(i), (i % 2,), b"%d" % i), label_names=["x", "y"], num_shards=4
    )
    assert shard_set.record_counts == [2, 3, 2, 3]
    assert sorted(os.listdir(out)) == sorted([os.path.basename(f) for f in shard_set.files] + [manifest.MANIFEST_NAME])
    assert np.array_equal([int(e.example_id) for e in _records(shard_set)], np.arange(10))
