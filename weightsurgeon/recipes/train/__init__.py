"""Freeze-SFT recipe: config, data, trainable-parameter selection, DeepSpeed config, runner, launchers."""
