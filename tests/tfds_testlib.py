"""An offline TFDS dataset for tests (tfds registers a builder class once per process, so every test
module imports it from here rather than from another test module)."""

import io

import tensorflow_datasets as tfds
from PIL import Image


def png(i: int, size=(9, 7)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 20 % 256, 3, 200)).save(buf, format="PNG")
    return buf.getvalue()


class TinyPetsForTest(tfds.core.GeneratorBasedBuilder):
    """A 3-class, multi-label-capable TFDS dataset generated offline (no downloads at all)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(),
                    "label": tfds.features.ClassLabel(names=["cat", "dog", "fox"]),
                    "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=["cat", "dog", "fox"])),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 7), "test": self._generate_examples(100, 3)}

    def _generate_examples(self, start, n):
        for i in range(start, start + n):
            yield (
                f"k{i}",
                {
                    "image": io.BytesIO(png(i)),
                    "label": i % 3,
                    "labels": [i % 3, (i + 1) % 3],
                    "file_name": f"img{i}.png",
                },
            )


def build(tmp_path_factory) -> str:
    """A TFDS data dir holding TinyPetsForTest, prepared as array_record (for a module-scoped fixture)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyPetsForTest(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir
