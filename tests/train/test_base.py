"""searchprune.train.base: the one place the base model is built, trained and measured."""

from __future__ import annotations

import torch

from searchprune.config import DataConfig, ModelConfig, ThreatModel, TrainConfig
from searchprune.data import make_splits
from searchprune.train import model_record, train_base_model

DATA = DataConfig(dataset="synthetic", train_size=256, val_size=128, test_size=64, batch_size=64,
                  eval_batch_size=128)
MODEL = ModelConfig(arch="mnist_small")
RECIPE = TrainConfig(recipe="standard", epochs=1, lr=0.05, batch_size=64, seed=3)
THREAT = ThreatModel(eps=0.02, alpha=0.01, steps=2)


def test_trains_measures_and_records_the_base_model() -> None:
    splits = make_splits(DATA)
    model, meta = train_base_model(MODEL, RECIPE, splits, data=DATA, threat=THREAT, device=torch.device("cpu"),
                                   eval_split="test", n_eval=32)
    assert {k: meta[k] for k in ("model", "dataset")} == model_record(MODEL, splits.info)
    assert meta["model"] == {"arch": "mnist_small", "factory": None, "kwargs": {}}
    assert meta["dataset"]["name"] == "synthetic" and meta["dataset"]["image_size"] == [28, 28]
    assert meta["recipe"]["seed"] == 3 and meta["threat"]["steps"] == 2 and meta["data"]["val_size"] == 128
    m = meta["metrics"]
    assert m["n_test"] == 32 and 0.0 <= m["test_pgd_acc"] <= m["test_clean_acc"] <= 1.0
    assert m["test_clean_acc"] > 0.2  # chance is 0.1: one epoch on 256 images learns something
    assert len(m["train_history"]) == 1 and m["train_history"][0]["images"] == 256
    assert m["train_seconds"] > 0


def test_same_seed_same_model_and_train_set_override() -> None:
    splits = make_splits(DATA)
    a, meta_a = train_base_model(MODEL, RECIPE, splits, data=DATA, threat=THREAT, device=torch.device("cpu"),
                                 n_eval=16)
    b, _ = train_base_model(MODEL, RECIPE, splits, data=DATA, threat=THREAT, device=torch.device("cpu"), n_eval=16)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert meta_a["metrics"]["n_val"] == 16 and "val_clean_acc" in meta_a["metrics"]
    _, meta_c = train_base_model(MODEL, RECIPE, splits, data=DATA, threat=THREAT, device=torch.device("cpu"),
                                 n_eval=16, train_set=splits.train.subset(range(64)))
    assert meta_c["metrics"]["train_history"][0]["images"] == 64
