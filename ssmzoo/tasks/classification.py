"""Sequence classification as a LightningModule (LRA, sCIFAR, synthetic tasks).

Batches are ``(tokens, lengths, labels)`` (see the data modules). Optimisation follows the S4
recipe: AdamW, SSM parameters in their own group (smaller lr, no weight decay; tagged by the
layers, grouped by :func:`ssmzoo.optim.param_groups`), linear warmup then cosine decay per step.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..models import SequenceModel
from .base import Task
from .predict import PredictOptions, split_loader, write_csv
from .schedule import adamw_with_schedule, warmup_steps_from


class ClassificationTask(Task):
    """Train and evaluate a :class:`SequenceModel` classifier with cross-entropy.

    Args:
        model: the classifier; its ``d_output`` is the number of classes.
        lr: peak learning rate of the AdamW groups that layers did not tag with their own lr.
        weight_decay: AdamW weight decay (not applied to tagged SSM parameters, biases and norms).
        warmup: linear warmup length: a fraction of all training steps when < 1, else a step count.
        betas: AdamW betas.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` and,
    when the datamodule has ``majority_class_accuracy``, ``test/majority_baseline``. Checkpoints keep the
    best ``val/acc``.
    """

    monitor = "val/acc"
    monitor_mode = "max"
    headline = {"test_acc": "test/acc", "majority_baseline": "test/majority_baseline"}

    def __init__(
        self,
        model: SequenceModel,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"ClassificationTask: model must be an nn.Module (a SequenceModel), got {type(model).__name__}"
            )
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"ClassificationTask: lr must be a number > 0, got {lr!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
            raise ValueError(f"ClassificationTask: weight_decay must be a number >= 0, got {weight_decay!r}")
        warmup_steps_from(warmup, 1)  # validates warmup now rather than when training starts
        num_classes = getattr(model, "d_output", None)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"ClassificationTask: model.d_output must be the number of classes (>= 2), got {num_classes!r}"
            )
        # Under the CLI the hparams are the config (class paths and arguments), which is what
        # load_from_checkpoint needs; built in Python, the model is an nn.Module whose weights the
        # checkpoint's state dict already holds, so it is dropped from the hparams.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("model"), nn.Module):
            del self.hparams["model"]
        self.model = model
        self.lr, self.weight_decay, self.warmup, self.betas = lr, weight_decay, warmup, tuple(betas)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # Evaluation batches with non-finite logits this epoch: a count on the logits' device, read once at the
        # epoch's end (a check per batch would wait for the device every batch).
        self._nonfinite: dict[str, Tensor | int] = {"val": 0, "test": 0}

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.model(tokens, lengths)

    def _shared_step(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        tokens, lengths, labels = batch
        logits = self(tokens, lengths)
        if stage != "train":
            self._nonfinite[stage] = self._nonfinite[stage] + (~torch.isfinite(logits).all()).long()
        loss = F.cross_entropy(logits, labels)
        accuracy(logits.argmax(-1), labels)
        batch_size = labels.shape[0]
        self.log(
            f"{stage}/loss", loss, prog_bar=stage != "test", batch_size=batch_size, sync_dist=stage != "train"
        )
        self.log(f"{stage}/acc", accuracy, prog_bar=True, batch_size=batch_size, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def _warn_nonfinite(self, stage: str) -> None:
        # A diverged model's argmax over NaN/inf logits still yields an "accuracy"; say so instead of letting a
        # NaN loss in the logs be the only sign.
        count, self._nonfinite[stage] = int(self._nonfinite[stage]), 0
        if count:
            rank_zero_warn(f"ClassificationTask: {count} {stage} batch(es) at step {self.global_step} gave non-finite "
                           f"logits: the model has diverged and {stage}/acc is meaningless (lower the lr, clip "
                           "gradients, or use pre-norm)")

    def on_validation_epoch_end(self) -> None:
        self._warn_nonfinite("val")

    def on_test_epoch_end(self) -> None:
        self._warn_nonfinite("test")
        datamodule = getattr(self.trainer, "datamodule", None)
        baseline = getattr(datamodule, "majority_class_accuracy", None)
        if callable(baseline):
            self.log("test/majority_baseline", float(baseline("test")), sync_dist=True)  # the same on every rank

    @classmethod
    def summary(cls, results: dict[str, float | None]) -> str:
        if results.get("test_acc") is None:
            return super().summary(results)
        line = f"test accuracy {results['test_acc']:.4f}"
        if results.get("majority_baseline") is not None:
            line += f"   majority-class baseline {results['majority_baseline']:.4f}"
        return line

    def configure_optimizers(self) -> dict:
        return adamw_with_schedule(self.model, self.lr, self.weight_decay, self.betas, self.warmup,
                                   self.trainer.estimated_stepping_batches)

    # -- ssmzoo predict: class probabilities and labels ------------------------------------------
    def prediction_loader(self, datamodule: Any, options: PredictOptions) -> Any:
        return split_loader(datamodule, options.split, type(self).__name__)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        tokens, lengths, labels = batch
        probabilities = torch.softmax(self(tokens, lengths).float(), dim=-1)
        return {"probabilities": probabilities.cpu(), "labels": labels.cpu()}

    def write_predictions(self, outputs: list[dict[str, Tensor]], folder: Path, datamodule: Any,
                          options: PredictOptions) -> list[Path]:
        """``predictions.csv``: per sample of the split (in the split's order) its label, the predicted class
        and the probability of each class."""
        probabilities = torch.cat([o["probabilities"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        predicted = probabilities.argmax(-1)
        header = ["sample", "label", "predicted", *(f"p_{c}" for c in range(probabilities.shape[1]))]
        rows = ([i, int(label), int(guess), *(f"{p:.6g}" for p in row.tolist())]
                for i, (label, guess, row) in enumerate(zip(labels, predicted, probabilities)))
        path = write_csv(folder / "predictions.csv", header, rows)
        accuracy = float((predicted == labels).double().mean()) if len(labels) else float("nan")
        print(f"ssmzoo: {len(labels)} {options.split} samples predicted, accuracy {accuracy:.4f}")
        return [path]
