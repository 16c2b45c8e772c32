"""Video data: manifests, builders, synthetic data, PyAV decoding, sampling, transforms, DataModules.

Import what you need from its module (``stop_lightning.data.manifest``, ``.decode``, ``.datamodules``,
...): the package itself imports nothing, so reading a manifest or the dataset registry loads no
torch, Lightning or PyAV.
"""
