"""Model card: counts, feature dimension and FLOPs from abstract values; the CLI's JSON output."""

import json
import os
import subprocess
import sys

import pytest

from configs.models.amoeba_net_b import get_config as amoeba_config
from configs.models.inception_v3 import get_config as inception_config
from models.card import format_card, model_card

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inception_v3_card_at_299():
    card = model_card(inception_config())
    assert card["params"] == 23_817_352
    assert card["feature_dim"] == 2048
    assert sum(card["per_block"].values()) == card["params"]
    assert list(card["per_block"])[0] == "stem" and list(card["per_block"])[-1] == "head"
    # FACTS.md: 5.71 G multiply-accumulates; XLA's count is about 4% under 2 x MACs.
    assert 0.9 * 2 * 5.713e9 < card["flops"] < 1.0 * 2 * 5.713e9
    assert "23,817,352" in format_card(card)


def test_amoeba_card_counts_every_block_and_scales_with_resolution():
    config = amoeba_config()
    config.update(dict(num_cells=3, filters=32, num_classes=10, image_size=64, aux_head=True))
    card = model_card(config)
    assert card["feature_dim"] == 512
    assert sum(card["per_block"].values()) == card["params"]
    assert "aux_head" in card["per_block"]
    config.image_size = 128
    assert model_card(config)["flops"] > 3.5 * card["flops"]


@pytest.mark.slow
def test_cli_prints_one_json_object():
    result = subprocess.run(
        [sys.executable, "-m", "models.card", "--config=configs/models/inception_v3.py", "--config.num_classes=1001",
         "--config.image_size=75", "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    card = json.loads(result.stdout)
    assert card["params"] == 23_819_401
    assert card["feature_dim"] == 2048 and card["flops"] > 0
