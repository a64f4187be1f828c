"""Inception-v3 model config (reference layout at width 1.0 and 299 px)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Defaults follow TF-Slim's Inception-v3 (BN decay 0.9997, no BN scale, dropout keep 0.8)."""
    config = ml_collections.ConfigDict()
    config.name = "inception_v3"
    config.num_classes = 1000
    config.image_size = 299
    config.width_multiplier = 1.0  # scales every conv's filters; e.g. 0.25 for tests/demos
    config.aux_head = False
    config.aux_loss_weight = 0.4  # used by the trainer when aux_head is on
    config.bn_scale = False  # Slim/Keras: no gamma; Kornblith et al. study it on
    # Running-average decay of every BatchNorm (Slim's 0.9997; Keras's layer default is 0.99).
    # Fine-tuning (Kornblith et al.) sets max(1 - 10 / steps_per_epoch, 0.9).
    config.bn_momentum = 0.9997
    config.dropout_rate = 0.2
    config.dtype = "float32"  # compute dtype; parameters stay float32
    config.remat = False  # activation checkpointing per block
    # pmap axis for cross-device BatchNorm ("" = per-device statistics); the trainer sets it per run.
    config.bn_axis_name = ""
    return config
