"""Retrieval task: InfoNCE over the global batch under DDP, whole-split evaluation, learning, errors.

The DDP test runs two CPU processes (gloo) the way ``torchrun`` does (the environment names rank
and world size, Lightning's ``ddp`` strategy joins them), because the STOP model's hooks are
closures that ``ddp_spawn`` cannot pickle. Each rank writes what it saw to ``tmp_path``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from stop_lightning.config import load_config
from stop_lightning.data.item_order import EpochSampler
from stop_lightning.data.manifest import ManifestError
from stop_lightning.models.aggregation import masked_frame_mean
from stop_lightning.models.backbone import load_clip
from stop_lightning.schema import ConfigError
from stop_lightning.tasks.retrieval import (
    RetrievalModule,
    logged_metric_names,
    symmetric_infonce,
    unique_by_index,
)
from stop_lightning.tasks.retrieval_metrics import querybank_normalise, retrieval_metrics

FRAMES, SIZE = 4, 64
WORDS = ["red", "blue", "green", "square", "moves", "left", "right", "up", "down", "a", "the"]


def tiny_cfg(cache_dir: Path, *extra: str):
    """demo_retrieval's tiny CLIP and model; no spatial dropout, so two runs draw the same numbers."""
    return load_config(
        "demo_retrieval",
        [
            f"paths.cache_dir={cache_dir}",
            "model.spatial.dropout=0.0",
            "trainer.enable_progress_bar=false",
            *extra,
        ],
    )


def make_module(cfg, seed: int = 0) -> RetrievalModule:
    torch.manual_seed(seed)
    return RetrievalModule(cfg, bundle=load_clip(cfg.model.clip, cfg.paths.cache_dir))


def random_captions(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (5,), generator=g)) for _ in range(n)]


def random_videos(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ in-memory data
class Items(Dataset):
    """``EpochSampler`` yields ``(index, item_seed)``; these items are fixed, so the seed is unused."""

    def __init__(self, videos: torch.Tensor, captions: list[str] | None = None):
        self.videos, self.captions = videos, captions

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        item = {"video": self.videos[i], "frame_mask": torch.ones(FRAMES, dtype=torch.bool), "index": i}
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item


class TensorRetrievalData(L.LightningDataModule):
    """What ``RetrievalDataModule`` gives the task, from tensors: loaders sharded by ``EpochSampler``
    (in order, padded by repeating the first items) and ``eval_captions``."""

    def __init__(self, data: dict, batch_size: int, eval_batch_size: int):
        super().__init__()
        self.data, self.batch_size, self.eval_batch_size = data, batch_size, eval_batch_size

    def _loader(self, dataset: Dataset, batch: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch, sampler=EpochSampler(len(dataset), shuffle=False))

    def train_dataloader(self):
        return self._loader(Items(self.data["train_videos"], self.data["train_captions"]), self.batch_size)

    def val_dataloader(self):
        return self._loader(Items(self.data["val_videos"]), self.eval_batch_size)

    test_dataloader = val_dataloader

    def eval_captions(self, stage: str = "test") -> tuple[list[str], list[int]]:
        caps = self.data["val_captions"]  # one list per video
        return [c for cs in caps for c in cs], [i for i, cs in enumerate(caps) for _ in cs]


def retrieval_data(num_train: int, num_val: int, captions_per_val: list[int]) -> dict:
    return {
        "train_videos": random_videos(num_train, 1),
        "train_captions": random_captions(num_train, 2),
        "val_videos": random_videos(num_val, 3),
        "val_captions": [random_captions(k, 10 + i) for i, k in enumerate(captions_per_val)],
    }


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        **kwargs,
    )


def reference_metrics(module: RetrievalModule, data: dict) -> dict[str, float]:
    """The metrics by hand: every video and caption embedded in one go, no sampler, no gather."""
    module.eval()
    with torch.no_grad():
        video, _ = module.encode_videos(data["val_videos"])
        dm = TensorRetrievalData(data, 1, 1)
        captions, owners = dm.eval_captions()
        text = module.encode_texts(captions)
    return retrieval_metrics(text @ video.t(), torch.as_tensor(owners), prefix="val/")


# ------------------------------------------------------------------------------ pure functions
def test_symmetric_infonce_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    video = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(20.0)
    logits = scale * text @ video.t()
    t2v = -(logits.diag() - logits.logsumexp(1)).mean()
    v2t = -(logits.diag() - logits.logsumexp(0)).mean()
    assert symmetric_infonce(text, video, scale).item() == pytest.approx(0.5 * (t2v + v2t).item(), rel=1e-6)
    assert symmetric_infonce(video, text, scale).item() == pytest.approx(
        symmetric_infonce(text, video, scale).item(), rel=1e-6
    )
    # The loss of a set of pairs does not depend on their order (ranks gather in rank order).
    perm = torch.randperm(5, generator=g)
    assert symmetric_infonce(text[perm], video[perm], scale).item() == pytest.approx(
        symmetric_infonce(text, video, scale).item(), rel=1e-6
    )


def test_unique_by_index_drops_sampler_padding():
    # 5 videos over 2 ranks: rank 0 sees 0 2 4, rank 1 sees 1 3 and then 0 again (padding).
    index = torch.tensor([0, 2, 4, 1, 3, 0])
    feats = torch.tensor([[0.0], [2.0], [4.0], [1.0], [3.0], [0.0]])
    kept_index, kept = unique_by_index(index, feats)
    assert kept_index.tolist() == [0, 1, 2, 3, 4]
    assert kept.squeeze(1).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_masked_frame_mean_skips_padding():
    frames = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [3.0, 2.0]]])  # last frame: a repeat
    mask = torch.tensor([[True, True, False]])
    assert masked_frame_mean(frames, mask).tolist() == [[2.0, 1.0]]


def test_logged_metric_names():
    names = logged_metric_names("val", dual=True)
    assert "val/t2v_R1" in names and "val/v2t_MnR" in names and "val/dsl_t2v_R10" in names
    assert not any("dsl" in n for n in logged_metric_names("val", dual=False))


# ------------------------------------------------------------------------------ module
def test_gather_is_identity_outside_ddp(cache_dir):
    module = make_module(tiny_cfg(cache_dir))
    x = torch.randn(3, 4)
    assert module.gather(x) is x  # no Trainer attached


def test_meanp_video_skips_padded_frames(cache_dir):
    """CLIP4Clip meanP pools frames in the task when frames are padded: a 2-frame video padded to 3
    frames (last repeated, masked) embeds exactly as the 2-frame video."""
    module = make_module(tiny_cfg(cache_dir, "model.preset=clip4clip_meanp")).eval()
    with torch.no_grad():
        module.model.aggregator.head.weight.add_(0.1 * torch.randn_like(module.model.aggregator.head.weight))
        two = random_videos(2, 0)[:, :2]  # [2, 2, 3, H, W]
        padded = torch.cat([two, two[:, -1:]], dim=1)  # [2, 3, 3, H, W]
        mask = torch.tensor([[True, True, False], [True, True, False]])
        expected, _ = module.encode_videos(two)
        got, _ = module.encode_videos(padded, mask)
        unmasked, _ = module.encode_videos(padded)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(unmasked, expected, atol=1e-4)  # without the mask the repeat counts twice


def test_whole_split_evaluation_with_multiple_captions_and_dual_softmax(cache_dir):
    cfg = tiny_cfg(cache_dir, "task.dual_softmax=true")
    module = make_module(cfg)
    data = retrieval_data(num_train=4, num_val=5, captions_per_val=[2, 1, 3, 1, 2])
    results = trainer().validate(module, datamodule=TensorRetrievalData(data, 2, 2), verbose=False)[0]
    assert module.last_eval_sizes == {"videos": 5, "captions": 9}
    expected = reference_metrics(module, data)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-4), key
    assert {f"val/dsl_{d}_R{k}" for d in ("t2v", "v2t") for k in (1, 5, 10)} <= set(results)


class WithTrainingCaptions(TensorRetrievalData):
    """``eval_captions("train")`` gives the training captions (QB-Norm's query bank)."""

    def eval_captions(self, stage: str = "test") -> tuple[list[str], list[int]]:
        if stage == "train":
            return list(self.data["train_captions"]), list(range(len(self.data["train_captions"])))
        return super().eval_captions(stage)


def test_conventions_and_qb_norm_from_the_config(cache_dir):
    """task.tie_rank / task.v2t_captions reach the metrics; task.qb_norm logs test/qb_t2v_* computed
    with the training captions as the query bank (and no qb_v2t: the bank holds captions only)."""
    cfg = tiny_cfg(
        cache_dir,
        "task.dual_softmax=false",
        "task.qb_norm=true",
        "task.qb_norm_beta=30",
        "task.qb_norm_k=2",
        "task.tie_rank=clip4clip",
        "task.v2t_captions=best_caption",
    )
    module = make_module(cfg)
    data = retrieval_data(num_train=6, num_val=5, captions_per_val=[2, 1, 3, 1, 2])
    results = trainer().test(module, datamodule=WithTrainingCaptions(data, 2, 2), verbose=False)[0]
    module.eval()
    with torch.no_grad():
        video, _ = module.encode_videos(data["val_videos"])
        captions, owners = TensorRetrievalData(data, 1, 1).eval_captions()
        sim = module.encode_texts(captions) @ video.t()
        bank = module.encode_texts(data["train_captions"]) @ video.t()
    conventions = {"tie_rank": "clip4clip", "v2t_captions": "best_caption"}
    expected = retrieval_metrics(sim, torch.as_tensor(owners), prefix="test/", **conventions)
    expected.update(
        retrieval_metrics(
            querybank_normalise(sim, bank, beta=30.0, k=2),
            torch.as_tensor(owners),
            prefix="test/qb_",
            directions=("t2v",),
            **conventions,
        )
    )
    expected["test/unreadable"] = 0.0  # every video was read
    assert set(expected) == set(results)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-4), key


def test_partial_evaluation_scores_the_embedded_videos(cache_dir):
    module = make_module(tiny_cfg(cache_dir))
    data = retrieval_data(num_train=4, num_val=6, captions_per_val=[1] * 6)
    trainer(limit_val_batches=2).validate(module, datamodule=TensorRetrievalData(data, 2, 2), verbose=False)
    assert module.last_eval_sizes == {"videos": 4, "captions": 4}


def test_a_monitor_retrieval_never_logs_fails_before_training(cache_dir):
    cfg = tiny_cfg(cache_dir, "checkpoint.monitor=val/top1")
    module = make_module(cfg)
    data = retrieval_data(num_train=4, num_val=2, captions_per_val=[1, 1])
    with pytest.raises(ConfigError, match="val/t2v_R1"):
        trainer(max_steps=1).fit(module, datamodule=TensorRetrievalData(data, 2, 2))


# ------------------------------------------------------------------------------ DDP
BATCH_PER_RANK, WORLD = 3, 2
DDP_VAL_CAPTIONS = [2, 1, 2, 1, 1]  # 5 videos (odd: the sampler pads rank 1 with video 0), 7 captions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordStep(L.Callback):
    """The loss of the one training step and the gradients DDP hands the optimiser (already averaged)."""

    def __init__(self):
        self.loss, self.grads = None, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = outputs["loss"].detach().clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {
            n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
        }


def ddp_worker(rank: int, port: int, out_dir: str, cache_dir: str) -> None:
    """One rank, started by ``torch.multiprocessing.spawn``: the environment makes Lightning join the
    other rank instead of launching processes (as under torchrun)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)
    out = Path(out_dir)
    cfg = tiny_cfg(Path(cache_dir), "model.text_prompts.enabled=true")
    module = make_module(cfg)
    module.load_state_dict(torch.load(out / "init.pt"))
    data = TensorRetrievalData(torch.load(out / "data.pt"), BATCH_PER_RANK, 2)
    metrics = trainer(devices=WORLD, strategy="ddp").validate(module, datamodule=data, verbose=False)[0]
    sizes = dict(module.last_eval_sizes)
    record = RecordStep()
    trainer(devices=WORLD, strategy="ddp", max_steps=1, limit_val_batches=0, callbacks=[record]).fit(
        module, datamodule=data
    )
    torch.save(
        {"metrics": metrics, "sizes": sizes, "loss": record.loss, "grads": record.grads},
        out / f"rank{rank}.pt",
    )


@pytest.mark.ddp
@pytest.mark.slow
def test_two_ranks_see_the_global_batch_and_the_whole_split(cache_dir, tmp_path):
    """Two ranks with 3 pairs each compute the InfoNCE loss of all 6 pairs, and after DDP's gradient
    averaging hold the gradient one process gets from those 6 pairs, in both towers (text prompts
    train here). A gather without gradients would give half of it: each rank's loss would reach
    only its own 3 pairs' features. Evaluation embeds 5 videos on 2 ranks (one padded) and scores
    7 captions exactly as one process does."""
    cfg = tiny_cfg(cache_dir, "model.text_prompts.enabled=true")
    module = make_module(cfg)
    torch.save(module.state_dict(), tmp_path / "init.pt")
    data = retrieval_data(num_train=BATCH_PER_RANK * WORLD, num_val=5, captions_per_val=DDP_VAL_CAPTIONS)
    torch.save(data, tmp_path / "data.pt")

    torch.multiprocessing.spawn(
        ddp_worker, args=(free_port(), str(tmp_path), str(cache_dir)), nprocs=WORLD, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # One process, the same 6 pairs in one batch, no gather.
    expected_metrics = reference_metrics(module, data)
    module.train()
    loss = module.contrastive_loss({"video": data["train_videos"], "caption": data["train_captions"]})
    loss.backward()
    expected_grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    for name in ("model.text_encoder.prompts", "model.global_prompts.tokens"):  # text and video towers
        assert expected_grads[name].norm() > 0, name

    for r, got in enumerate(ranks):
        assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-5), f"rank {r} loss"
        assert got["grads"].keys() == expected_grads.keys()
        flat_got = torch.cat([got["grads"][n].flatten() for n in expected_grads])
        flat_expected = torch.cat([g.flatten() for g in expected_grads.values()])
        # Float32 sums in another order: errors relative to the whole gradient (some tensors'
        # gradients are zero in exact arithmetic and only rounding noise here).
        assert (flat_got - flat_expected).norm() <= 1e-5 * flat_expected.norm(), f"rank {r}"
        for name, grad in expected_grads.items():
            error = (got["grads"][name] - grad).norm()
            ratio = (got["grads"][name].norm() / grad.norm().clamp_min(1e-12)).item()
            assert error <= 1e-4 * grad.norm() + 1e-6 * flat_expected.norm(), (
                f"rank {r} {name}: norm ratio {ratio:.3f}"
            )
        assert got["sizes"] == {"videos": 5, "captions": sum(DDP_VAL_CAPTIONS)}
        for key, value in expected_metrics.items():
            assert got["metrics"][key] == pytest.approx(value, abs=1e-4), f"rank {r} {key}"


# ------------------------------------------------------------------------------ learning
@pytest.mark.slow
def test_retrieval_learns_colour_words(cache_dir, tmp_path, monkeypatch):
    """demo_retrieval (tiny random CLIP, 64 synthetic train videos, 32 test videos: chance R@1 3.1%,
    chance mean rank 16.5), 120 steps, seed 0; the last weights are tested (no validation, so
    nothing is selected on the test set).

    What this measures: the frozen random text tower separates captions mostly by colour (cosine
    ~0.85 between colours, ~0.96 between directions), so the video side learns to sit next to its
    caption's colour; a retriever that knew only the colour would score R@1 18.8% here. By hand,
    seeds 0, 1, 2: untrained R@1 3.1 / 0.0 / 3.1%, trained 15.6 / 12.5 / 18.8%, mean rank 9.8 / 10.2 / 7.2.
    """
    from stop_lightning.train import evaluate, train

    cfg = load_config(
        "demo_retrieval",
        [
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            "seed=0",
            "trainer.enable_progress_bar=false",
            "trainer.limit_val_batches=0",
            "checkpoint.monitor=''",
        ],
    )
    monkeypatch.setenv("STOP_RUN_STAMP", "untrained")
    before = evaluate(cfg, untrained=True)["test/t2v_R1"]
    monkeypatch.setenv("STOP_RUN_STAMP", "trained")
    trained = train(cfg)
    after = trained["test/t2v_R1"]
    chance = 100 / 32
    assert before <= 2 * chance, before
    assert after >= 3 * chance and after >= before + 2 * chance, (before, after)
    assert trained["test/t2v_MnR"] <= 12.5, trained  # chance: 16.5


# ------------------------------------------------------------------------------ real data
def msrvtt_cfg(tmp_path: Path, cache_dir: Path):
    return load_config(
        "msrvtt",
        [
            f"paths.data_root={tmp_path}/data",
            f"paths.manifest_root={tmp_path}/manifests",
            "model.clip.source=tiny",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}/runs",
            "logger.wandb=false",
        ],
    )


@pytest.mark.parametrize("videos_present", [False, True])
def test_msrvtt_without_data_names_the_manifest_command(tmp_path, cache_dir, monkeypatch, videos_present):
    from stop_lightning.train import train

    monkeypatch.setenv("STOP_RUN_STAMP", "r")
    cfg = msrvtt_cfg(tmp_path, cache_dir)
    if videos_present:
        (tmp_path / "data" / "msrvtt" / "videos").mkdir(parents=True)
    with pytest.raises(ManifestError) as err:
        train(cfg)
    message = str(err.value)
    command = f"stop-lightning manifest msrvtt --root {tmp_path}/data/msrvtt/videos"
    assert command in message and f"--out {tmp_path}/manifests/msrvtt" in message, message


def test_msrvtt_reference_settings(tmp_path, cache_dir):
    cfg = msrvtt_cfg(tmp_path, cache_dir)
    d, o = cfg.data, cfg.optim
    assert (cfg.task.name, d.dataset, d.sampling, d.fps, d.num_frames) == (
        "retrieval",
        "msrvtt",
        "fps",
        3.0,
        12,
    )
    assert (d.batch_size, d.max_text_tokens, cfg.model.text_prompts.max_text_tokens) == (32, 32, 32)
    assert (o.lr, o.weight_decay, o.scheduler, o.warmup_ratio, cfg.trainer.max_epochs) == (
        1e-3,
        0.2,
        "cosine",
        0.1,
        5,
    )
    assert cfg.trainer.precision == "auto"  # bf16-mixed on GPUs with bf16, fp32 on CPU
    assert (cfg.checkpoint.monitor, cfg.checkpoint.mode) == ("val/t2v_R1", "max")
    assert cfg.model.preset == "stop"
