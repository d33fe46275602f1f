"""Training: config and presets, the VIVI model (encoder + heads), the loop, resume, the run's log,
checkpoints, augmentation.

``train(config, data, out, resume=False)`` is the entry point (``vivi train`` on the command line);
``load_config`` reads a preset by name (``list_presets()``) or a YAML file and applies overrides.
Submodules are imported lazily so that ``vivi.train.augment`` stays light.
"""
__all__ = ["TrainConfig", "VIVIModel", "list_presets", "load_config", "train"]


def __getattr__(name):
    if name in ("TrainConfig", "list_presets", "load_config"):
        from vivi.train import config
        return getattr(config, name)
    if name == "VIVIModel":
        from vivi.train.model import VIVIModel
        return VIVIModel
    if name == "train":
        from vivi.train.loop import train
        return train
    raise AttributeError(name)
