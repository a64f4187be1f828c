"""Several source corpora merged into one label space (data/merged.py) through the prepare stage."""

import pytest

from configs import demo
from data import manifest, records, sides
from launch import config_cli, stages, validate
from tests.test_real_data import CLASSES, SOURCE_LABELS, write_csv_source, write_folder_target


def _config(tmp_path, prefix_labels):
    config = demo.get_config("tiny")
    config.data.kind = "external"
    config.data.target_name = "test_target"
    config.data.target = sides.side_config(kind="folder", path=str(tmp_path / "target"))
    config.data.source = sides.side_config(kind="merged", prefix_labels=prefix_labels)
    config.data.source.parts.web = sides.side_config(
        kind="csv",
        path=str(tmp_path / "csv"),
        train_split="labels.csv",
        hierarchy=str(tmp_path / "csv" / "tree.json"),
    )
    config.data.source.parts.birds = sides.side_config(kind="folder", path=str(tmp_path / "birds"))
    return config


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    write_folder_target(root / "target")
    write_csv_source(root / "csv", n=24)  # labels bird, fish, heron, owl, trout, wren; a tree
    write_folder_target(root / "birds", train_per_class=2, test_per_class=1)  # heron, owl, wren folders
    return root


def _examples(shard_set):
    return [records.decode_example(r) for f in shard_set.files for r in records.iter_records(f)]


@pytest.mark.parametrize("prefix_labels", [False, True])
def test_merged_source_one_label_space(corpora, tmp_path, prefix_labels):
    config = _config(corpora, prefix_labels)
    validate.check_config(config)
    stages.run_pipeline(config, str(tmp_path), ["prepare"])
    source = manifest.load_manifest(str(tmp_path / "data" / "source"))
    examples = _examples(source)
    assert source.num_records == len(examples) == 24 + 2 * len(CLASSES)
    assert len({e.example_id for e in examples}) == len(examples)
    assert {e.example_id.split(b"/")[0] for e in examples} == {b"web", b"birds"}
    if prefix_labels:
        # parts in name order (birds, web), each part's labels in its own order
        assert source.label_names == [f"birds/{c}" for c in CLASSES] + [f"web/{n}" for n in SOURCE_LABELS]
        assert source.hierarchy["web"] == ["web/animal"] and source.hierarchy["birds"] == [
            f"birds/{c}" for c in CLASSES
        ]
        assert source.hierarchy["web/bird"] == ["web/heron", "web/owl", "web/wren"]
    else:  # the bird folders' heron/owl/wren are the CSV's labels of the same names
        assert source.label_names == [*CLASSES, "bird", "fish", "trout"]
        assert source.hierarchy["bird"] == ["heron", "owl", "wren"]
        owl = source.label_names.index("owl")
        birds_owls = [e for e in examples if e.example_id.startswith(b"birds/owl/")]
        assert len(birds_owls) == 2 and all(e.labels == (owl,) for e in birds_owls)


def test_merged_source_config_errors(corpora):
    config = _config(corpora, False)
    config.data.source.parts.birds.kind = "merged"
    with pytest.raises(config_cli.ConfigError, match="'data.source.parts.birds.kind'"):
        validate.check_config(config)
    config = _config(corpora, False)
    config.data.target = sides.side_config(kind="merged")
    with pytest.raises(config_cli.ConfigError, match="'data.target.parts'"):
        validate.check_config(config)
