"""Errors of the fine-tuning tools; each ends as one clear line in the CLI."""

from __future__ import annotations

from vitguard.errors import VitguardError

__all__ = ["DatasetError", "NoTrainableHeadError", "TrainExtraMissingError"]


class DatasetError(VitguardError):
    """The labelled image folder cannot be trained or evaluated on as it is.

    Raised for a missing folder, fewer than two classes, a class with no readable image, too few images to
    split, validation classes that differ from the training classes, or image modes that differ by class.
    The message says what to change.
    """


class NoTrainableHeadError(VitguardError):
    """The model spec names a model vitguard cannot train (an exported ONNX graph, the bundled open_nsfw).

    Fine-tuning needs a timm model in torch: a hub id, a checkpoint directory or ``timm:ARCH``.
    """


class TrainExtraMissingError(VitguardError):
    """A fine-tuning or report tool was called on an install without the ``train`` extra (matplotlib).

    The worker and the moderation commands do not need it, so a plain ``pip install vitguard`` leaves it out.
    """
