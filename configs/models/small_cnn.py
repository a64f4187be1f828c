"""Small ConvNet config: the fast model of the end-to-end test (`configs/demo.py:tiny`)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Three 3x3 conv-BN-ReLU stages with pooling; ~100k parameters at width 1.0."""
    config = ml_collections.ConfigDict()
    config.name = "small_cnn"
    config.num_classes = 10
    config.image_size = 32
    config.stage_filters = (32, 64, 128)
    config.convs_per_stage = 1
    config.width_multiplier = 1.0  # scales every stage's filters
    config.aux_head = False  # no auxiliary classifier; kept so trainers read one set of fields
    config.bn_momentum = 0.9
    config.dropout_rate = 0.0
    config.dtype = "float32"  # compute dtype; parameters stay float32
    config.remat = False  # activation checkpointing per stage
    # pmap axis for cross-device BatchNorm ("" = per-device statistics); the trainer sets it per run.
    config.bn_axis_name = ""
    return config
