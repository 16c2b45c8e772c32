"""Two CPU processes (gloo): the EpochSampler gives each rank a disjoint part of the split,
reading videos or frame shards."""

import json

import lightning as L
import pytest
import torch

from stop_lightning.data.datamodules import RecognitionDataModule
from stop_lightning.data.shards import write_shards
from stop_lightning.data.stored_copies import StoreSettings

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class RecordIndices(L.LightningModule):
    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list[int]] = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"] += batch["index"].tolist()
        return (self.weight * batch["video"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.seen["val"] += batch["index"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_fit_end(self):  # ddp_spawn: the ranks' state does not come back, so write it out
        with open(f"{self.out_dir}/rank{self.global_rank}.json", "w") as fh:
            json.dump(self.seen, fh)


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["video", "shards"])
def test_two_ranks_see_disjoint_clips_covering_the_split(tmp_path, hmdb, data_cfg, fmt):
    root, manifests = hmdb
    shards = tmp_path / "shards"
    if fmt == "shards":
        write_shards(root, manifests, shards, StoreSettings(short_side=32, fps=0), progress=False)
    cfg = data_cfg(root, manifests, batch_size=2, format=fmt, shard_dir=str(shards))
    dm = RecognitionDataModule(cfg, 16, MEAN, STD, seed=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # as stop_lightning.train builds it: EpochSampler shards itself
    )
    model = RecordIndices(str(tmp_path))
    trainer.fit(model, datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for stage, size in (("train", 12), ("val", 8)):
        a, b = (set(r[stage]) for r in ranks)
        assert not a & b, f"{stage}: both ranks saw clips {sorted(a & b)}"
        assert a | b == set(range(size))
