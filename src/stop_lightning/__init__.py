"""stop_lightning: STOP spatial-temporal dynamic prompting of a frozen CLIP, on PyTorch Lightning."""

__version__ = "0.1.0"
