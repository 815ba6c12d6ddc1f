"""Training options against their definitions: EMA, accumulation, ghost BN, early stop, TTA, teacher."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import TINY_BASE
from trainable import ConfigError, from_flat, train, with_key
from trainable.config import Augment, Train, TrialConfig, flatten, get_key
from trainable.ghost_bn import GhostBatchNorm2d, apply_ghost_bn
from trainable.model_io import load_model
from trainable.objective import Objective
from trainable.run import accumulate_gradients, evaluate


def tiny(**changes):
    return from_flat({**flatten(TINY_BASE), **changes})


def no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_gradient_accumulation_equals_the_full_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    objective = Objective(Augment(), Train(), 10, torch.Generator().manual_seed(0))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    grads = []
    for parts in (1, 4):
        model.zero_grad()
        accumulate_gradients(model, objective, x, y, parts, no_autocast)
        grads.append([p.grad.clone() for p in model.parameters()])
    for full, acc in zip(*grads):
        assert torch.allclose(full, acc, atol=1e-6)


def test_ghost_batch_norm_normalises_each_ghost_batch_on_its_own():
    torch.manual_seed(0)
    ghost = GhostBatchNorm2d(3, ghost=4)
    plain = nn.BatchNorm2d(3)
    x = torch.randn(12, 3, 5, 5) * torch.arange(1, 13.0)[:, None, None, None]
    out = ghost(x)
    expected = torch.cat([plain(part) for part in x.split(4)])
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(ghost.running_mean, plain.running_mean) and ghost.num_batches_tracked == 3
    model = apply_ghost_bn(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)), 8)
    assert isinstance(model[1], GhostBatchNorm2d) and model[1].ghost == 8


def test_ema_follows_its_recurrence_and_is_reported_beside_the_raw_model():
    seen = []
    result = train(tiny(**{"train.ema_decay": 0.9, "train.epochs": 2}), lambda e, m: seen.append(m))
    assert {"val_error_ema", "val_loss_ema"} <= set(seen[0]) and "test_error_ema" in result
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    w = nn.Parameter(torch.zeros(1))
    ema = AveragedModel(nn.ParameterList([w]), multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    expected = None
    for value in (1.0, 2.0, 3.0):
        w.data.fill_(value)
        ema.update_parameters(nn.ParameterList([w]))
        expected = value if expected is None else 0.9 * expected + 0.1 * value  # first update copies
        assert ema.module[0].item() == pytest.approx(expected)


def test_early_stopping_ends_when_val_error_stops_improving():
    result = train(tiny(**{"train.epochs": 6, "train.early_stop": 1, "optim.lr": 1.0e-9,
                           "augment.crop_padding": 0, "augment.flip": False}))
    assert result["epochs_done"] < 6


def test_tta_flip_averages_the_softmax_of_image_and_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    loss, err = evaluate(model, [(x, y)], no_autocast, tta_flip=True)
    probs = 0.5 * (F.softmax(model(x), 1) + F.softmax(model(x.flip(3)), 1))
    assert loss == pytest.approx(F.nll_loss(probs.log(), y).item(), rel=1e-5)
    assert err == pytest.approx((probs.argmax(1) != y).float().mean().item())


def test_saved_model_is_a_distillation_teacher(tmp_path):
    path = tmp_path / "teacher.pt"
    train(tiny(**{"train.save_model": str(path)}))
    teacher = load_model(path, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    result = train(tiny(**{"train.teacher": str(path), "train.distill_alpha": 0.5}))
    assert result["train_loss"] == result["train_loss"]  # finite, not NaN
    with pytest.raises(ConfigError, match="train.teacher"):
        train(tiny(**{"train.teacher": str(tmp_path / "missing.pt")}))


def test_bf16_training_stays_finite():
    result = train(tiny(**{"train.precision": "bf16", "train.epochs": 2}))
    assert all(torch.isfinite(torch.tensor(result[k])) for k in ("train_loss", "val_loss", "test_loss"))


@pytest.mark.parametrize("changes,key", [
    ({"train.precision": "fp16", "train.device": "cpu"}, "train.precision"),
    ({"train.ghost_batch": 128}, "train.ghost_batch"),
    ({"train.accumulate": 3}, "train.accumulate"),
    ({"train.ema_decay": 1.5}, "train.ema_decay"),
    ({"train.early_stop": 0}, "train.early_stop"),
])
def test_invalid_combinations_are_one_clear_error(changes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(tiny(**changes))


def test_a_run_killed_after_an_epoch_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    cfg = tiny(**{"train.epochs": 3, "augment.mixup.alpha": 1.0, "train.ema_decay": 0.9, "model.drop_path": 0.1})
    straight = train(cfg)

    class Kill(Exception):
        pass

    def killed_after_two(epoch, metrics):
        if epoch == 2:
            raise Kill

    checkpoint = tmp_path / "trial" / "seed0.pt"
    with pytest.raises(Kill):
        train(cfg, killed_after_two, checkpoint)
    epochs = []
    resumed = train(cfg, lambda epoch, m: epochs.append(epoch), checkpoint)
    assert epochs == [3]  # epochs 1 and 2 came from the checkpoint
    for key in ("train_loss", "val_error", "test_error", "test_error_ema"):
        assert resumed[key] == straight[key]
    saved = torch.load(checkpoint, weights_only=True)  # plain tensors and values: no code runs on load
    assert len(saved["history"]) == 3


def test_a_checkpoint_of_another_config_at_the_path_is_not_resumed(tmp_path):
    # A study made again under the same name numbers its trials from 0, so its trial 0 finds the
    # checkpoint a killed trial 0 of the old study left behind: that must not become its start.
    checkpoint = tmp_path / "trial-0" / "seed0.pt"
    train(tiny(**{"train.epochs": 1, "optim.lr": 0.3}), checkpoint=checkpoint)
    assert len(torch.load(checkpoint, weights_only=True)["history"]) == 1
    epochs = []
    other = tiny(**{"train.epochs": 2, "optim.lr": 0.05})
    result, fresh = train(other, lambda epoch, m: epochs.append(epoch), checkpoint), train(other)
    assert epochs == [1, 2]  # trained from scratch, not from the old run's epoch 1
    assert [result[k] for k in ("train_loss", "test_error")] == [fresh[k] for k in ("train_loss", "test_error")]
    assert torch.load(checkpoint, weights_only=True)["config"]["optim.lr"] == 0.05  # and it took the path over
    # The same config with another thread count is the same run: it resumes.
    epochs.clear()
    train(with_key(other, "train.threads", 1), lambda epoch, m: epochs.append(epoch), checkpoint)
    assert epochs == []


def test_a_checkpoint_records_only_the_keys_changed_from_the_defaults(tmp_path):
    # As a sweep's fingerprint counts its base: a release that adds a key at its default changes no
    # checkpoint's identity, so the trials in flight of a resumed sweep resume from their epochs.
    checkpoint = tmp_path / "seed0.pt"
    cfg = tiny(**{"train.epochs": 1, "optim.lr": 0.3})
    train(cfg, checkpoint=checkpoint)
    changed = {k: v for k, v in flatten(TINY_BASE).items() if k != "train.threads"}
    changed.update({"train.epochs": 1, "optim.lr": 0.3})
    saved = torch.load(checkpoint, weights_only=True)["config"]
    assert saved == {k: v for k, v in changed.items() if v != get_key(TrialConfig(), k)}


def test_a_checkpoint_resumed_under_another_lr_keeps_its_weights_and_takes_the_new_hyperparameters(tmp_path):
    # What PBT does: a clone continues another trial's checkpoint with perturbed lr and weight decay.
    from trainable.run import Training
    base = {"train.epochs": 4, "optim.lr": 0.1, "optim.weight_decay": 5e-4, "schedule.warmup_epochs": 1}
    donor = Training(tiny(**base))
    donor.epoch()
    donor.save(tmp_path / "seed0.pt")
    clone = Training(tiny(**{**base, "optim.lr": 0.05, "optim.weight_decay": 1e-3}))
    assert not clone.load(tmp_path / "seed0.pt") and clone.history == []  # another config: not by default
    assert clone.load(tmp_path / "seed0.pt", any_config=True)
    steps = donor.sched.last_epoch
    assert clone.sched.last_epoch == steps and clone.history == donor.history
    factor = donor.sched.lr_lambdas[0](steps)
    assert donor.opt.param_groups[0]["lr"] == pytest.approx(0.1 * factor)
    for group in clone.opt.param_groups:
        assert group["lr"] == pytest.approx(0.05 * factor)
        assert group["weight_decay"] in (1e-3, 0.0)  # 0: a group without decay (BN, bias) when so configured
    for a, b in zip(clone.model.state_dict().values(), donor.model.state_dict().values()):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in clone.opt.state.values()]
    assert momentum and all(torch.equal(m, donor.opt.state[p]["momentum_buffer"])
                            for m, p in zip(momentum, donor.opt.state))
    clone.epoch()
    last_step = clone.sched.last_epoch - 1
    assert clone.history[-1]["lr"] == pytest.approx(0.05 * clone.sched.lr_lambdas[0](last_step))


def test_a_model_too_big_for_memory_fails_the_trial_with_out_of_memory():
    from trainable.errors import OutOfMemory
    with pytest.raises(OutOfMemory, match="out of memory"):
        train(tiny(**{"model.base_channels": 200000}))  # a 1.4 TB conv weight: refused at allocation
