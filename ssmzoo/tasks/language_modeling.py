"""Next-token prediction as LightningModules: language modelling on text, and recall on synthetic tasks.

Batches are dicts (``ssmzoo.data.lm``, ``ssmzoo.data.synthetic``):

    input_ids  (batch, length) int64
    targets    (batch, length) int64, the token expected after each input token, -100 where nothing is asked
    num_bytes  (batch,) int64, the UTF-8 bytes the targets cover (text only)
    seq_idx    (batch, length) the document of each token in packed windows (text only): the model gets
               ``segments=Segments.from_seq_idx(seq_idx)``, so no document sees the one before it

Evaluation sums over the whole split (float64), so the numbers do not depend on the batch size:

    loss = Σ nats / tokens         ppl = exp(loss)          bpb = Σ nats / (ln 2 · Σ bytes)

Bits per byte divide by the bytes the text occupies, not by tokens, so they compare across tokenizers (a
byte model and a BPE model evaluated on the same documents).
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.segments import Segments
from .base import Task, run_folder
from .predict import PredictOptions, split_loader, write_atomic, write_csv, write_jsonl
from .schedule import adamw_with_schedule, warmup_steps_from

TOKENIZER_KEY = "ssmzoo_tokenizer"  # in every checkpoint of a LanguageModelingTask run: {"kind": "byte"} or the BPE
TOKENIZER_FILE = "tokenizer.json"  # a run's BPE tokenizer, in its folder


def describe_tokenizer(tokenizer: Any) -> dict[str, str] | None:
    """A tokenizer as plain strings (what a checkpoint loaded with weights_only may hold): the byte tokenizer by
    name, a BPE one by its tokenizers JSON and separator."""
    if getattr(tokenizer, "name", None) == "byte":
        return {"kind": "byte"}
    inner = getattr(tokenizer, "tokenizer", None)
    if getattr(tokenizer, "name", None) == "bpe" and callable(getattr(inner, "to_str", None)):
        return {"kind": "bpe", "json": inner.to_str(), "eos_token": str(tokenizer.eos_token)}
    return None

IGNORE_INDEX = -100
_SUMS = ("nats", "tokens", "bytes", "correct", "sequences", "exact")


def _check_number(owner: str, arg: str, value: Any, low: float, inclusive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (value < low if inclusive else value <= low):
        raise ValueError(f"{owner}: {arg} must be a number {'>=' if inclusive else '>'} {low}, got {value!r}")


class _NextTokenTask(Task):
    """Shared by both tasks: cross-entropy on the asked targets, split-wide sums, AdamW with the layers' tagged
    parameter groups, linear warmup then cosine decay (or a constant rate) per step."""

    sequence_metrics = False  # also log the fraction of sequences with every asked token right

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        weight_decay: float,
        warmup: float,
        betas: tuple[float, float],
        lr_schedule: Literal["cosine", "constant"],
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(model, nn.Module):
            raise ValueError(f"{owner}: model must be an nn.Module mapping input_ids (batch, length) to logits "
                             f"(batch, length, vocab_size), got {type(model).__name__}")
        _check_number(owner, "lr", lr, 0, inclusive=False)
        _check_number(owner, "weight_decay", weight_decay, 0, inclusive=True)
        warmup_steps_from(warmup, 1)  # validates warmup now rather than when training starts
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"{owner}: lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        # As in ClassificationTask: under the CLI the hparams are the config, which load_from_checkpoint needs;
        # built in Python, the model's weights are in the state dict, so the module is dropped from the hparams.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("model"), nn.Module):
            del self.hparams["model"]
        self.model = model
        self.lr, self.weight_decay, self.warmup, self.betas = lr, weight_decay, warmup, tuple(betas)
        self.lr_schedule = lr_schedule
        self._sums: dict[str, Tensor] = {}

    # -- batches ---------------------------------------------------------------------------------
    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor, Segments | None, Tensor | None]:
        if not isinstance(batch, dict) or "input_ids" not in batch or "targets" not in batch:
            got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"{type(self).__name__}: batches must be dicts with input_ids and targets "
                             f"(see ssmzoo.data.lm / ssmzoo.data.synthetic), got {got}")
        seq_idx = batch.get("seq_idx")
        segments = None if seq_idx is None else Segments.from_seq_idx(seq_idx)
        return batch["input_ids"], batch["targets"], segments, batch.get("num_bytes")

    def forward(self, input_ids: Tensor, segments: Segments | None = None) -> Tensor:
        """Logits (batch, length, vocab); ``segments``: the packed documents of the batch, if any."""
        return self.model(input_ids) if segments is None else self.model(input_ids, segments=segments)

    def _loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        input_ids, targets, segments, num_bytes = self._unpack(batch)
        logits = self(input_ids, segments)
        # at least float32 (half-precision logits upcast), never less than the model's own (float64 stays)
        wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
        nats = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none").view_as(targets)
        return logits, targets, nats, num_bytes

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        _, targets, nats, num_bytes = self._loss(batch)
        asked = targets != IGNORE_INDEX
        tokens = asked.sum()
        loss = nats.sum() / tokens.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=targets.shape[0])
        if num_bytes is not None:
            self.log("train/bpb", nats.sum().detach() / (math.log(2) * num_bytes.sum().clamp(min=1)),
                     batch_size=targets.shape[0])
        return loss

    # -- evaluation: sums over the split ---------------------------------------------------------
    def _accumulate(self, batch: Any) -> None:
        logits, targets, nats, num_bytes = self._loss(batch)
        asked = targets != IGNORE_INDEX
        hit = (logits.argmax(-1) == targets) & asked
        rows = asked.any(1)
        values = {
            "nats": nats.sum(dtype=torch.float64),
            "tokens": asked.sum(),
            "bytes": num_bytes.sum() if num_bytes is not None else torch.zeros((), device=targets.device),
            "correct": hit.sum(),
            "sequences": rows.sum(),
            "exact": (rows & (hit.sum(1) == asked.sum(1))).sum(),
        }
        for key, value in values.items():
            total = self._sums.setdefault(key, torch.zeros((), dtype=torch.float64, device=targets.device))
            total += value.to(torch.float64)
        self._saw_bytes = self._saw_bytes and num_bytes is not None

    def _start(self) -> None:
        self._sums, self._saw_bytes = {}, True

    def _finish(self, split: str) -> dict[str, float]:
        if not self._sums:
            return {}
        sums = {k: float(self.trainer.strategy.reduce(self._sums[k], reduce_op="sum")) for k in _SUMS}
        self._sums = {}
        tokens = max(sums["tokens"], 1.0)
        metrics = {"loss": sums["nats"] / tokens, "acc": sums["correct"] / tokens}
        metrics["ppl"] = math.exp(min(metrics["loss"], 700.0))
        if self.sequence_metrics:
            metrics["exact"] = sums["exact"] / max(sums["sequences"], 1.0)
        if self._saw_bytes and sums["bytes"] > 0:
            metrics["bpb"] = sums["nats"] / (math.log(2) * sums["bytes"])
        for key, value in metrics.items():
            self.log(f"{split}/{key}", value, prog_bar=split == "val" and key in ("loss", "bpb", "acc"))
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._start()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._accumulate(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_start(self) -> None:
        self._start()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._accumulate(batch)

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        return adamw_with_schedule(self.model, self.lr, self.weight_decay, self.betas, self.warmup,
                                   self.trainer.estimated_stepping_batches, self.lr_schedule)


class LanguageModelingTask(_NextTokenTask):
    """Train and evaluate a causal language model on text (``ssmzoo.data.lm.TextDataModule``).

    Args:
        model: input_ids (batch, length) -> logits (batch, length, vocab_size); any of ``ssmzoo.models``'
            ``LanguageModel``, ``MAC``, ``MAG``, ``MAL``. Its ``vocab_size`` comes from the data.
        lr, weight_decay, betas: AdamW (layers' tagged SSM parameters keep their own lr and no weight decay).
        warmup: linear warmup: a fraction of all training steps when < 1, else a step count.
        lr_schedule: ``"cosine"`` decay to zero over the run, or ``"constant"`` after warmup (for runs bounded by
            wall time, whose step count is not known in advance).
        sample_length: tokens generated after each validation (0: none), logged to TensorBoard (``val/sample``)
            and appended to ``samples.txt`` in the run folder.
        sample_prompt: the text they continue (after the document separator; "" starts a document).
        sample_temperature, sample_top_k: sampling settings (top_k 0: off); each sample is seeded by
            ``sample_seed`` and the step, so it never touches the run's random state.

    Logs ``train/loss``, ``train/bpb``, and for ``val``/``test``: ``loss`` (nats per token), ``ppl``, ``bpb``
    (bits per byte) and ``acc`` (next-token accuracy). Checkpoints keep the lowest ``val/bpb``.
    """

    monitor = "val/bpb"
    monitor_mode = "min"
    headline = {"test_bpb": "test/bpb", "test_ppl": "test/ppl", "test_loss": "test/loss"}

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        sample_length: int = 200,
        sample_prompt: str = "",
        sample_temperature: float = 0.8,
        sample_top_k: int = 0,
        sample_seed: int = 0,
    ) -> None:
        super().__init__(model, lr, weight_decay, warmup, betas, lr_schedule)
        owner = type(self).__name__
        for arg, value in (("sample_length", sample_length), ("sample_top_k", sample_top_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{owner}: {arg} must be an int >= 0, got {value!r}")
        _check_number(owner, "sample_temperature", sample_temperature, 0, inclusive=False)
        if not isinstance(sample_prompt, str):
            raise ValueError(f"{owner}: sample_prompt must be a string, got {type(sample_prompt).__name__}")
        if not isinstance(sample_seed, int) or isinstance(sample_seed, bool):
            raise ValueError(f"{owner}: sample_seed must be an int, got {sample_seed!r}")
        self.sample_length, self.sample_prompt = sample_length, sample_prompt
        self.sample_temperature, self.sample_top_k, self.sample_seed = sample_temperature, sample_top_k, sample_seed
        self.last_sample: str | None = None

    def on_validation_epoch_end(self) -> None:
        metrics = self._finish("val")
        if metrics and "bpb" not in metrics:
            raise ValueError(f"{type(self).__name__}: validation batches carry no num_bytes, so bits per byte (the "
                             "monitored metric) is unknown; use a text datamodule (ssmzoo.data.lm.TextDataModule) or "
                             "RecallTask for synthetic tasks")
        if self.sample_length and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            if self.device_mesh is not None:  # sharded (FSDP2): decoding on rank 0 alone would wait for the others
                if not getattr(self, "_said_no_samples", False):
                    print(f"ssmzoo: no validation samples under {type(self.trainer.strategy).__name__} (the sharded "
                          "network gathers its weights with every process); --model.init_args.sample_length=0 "
                          "says so in the config", file=sys.stderr, flush=True)
                    self._said_no_samples = True
                return
            self._log_sample()

    @torch.no_grad()
    def _log_sample(self) -> None:
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None or not callable(getattr(self.model, "generate", None)):
            return
        prompt = [tokenizer.eos_id] + [int(i) for i in tokenizer.encode(self.sample_prompt)]
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.sample_seed + self.global_step)
        out = self.model.generate(torch.tensor([prompt], device=device), max_new_tokens=self.sample_length,
                                  do_sample=True, temperature=self.sample_temperature, top_k=self.sample_top_k,
                                  generator=generator)
        self.last_sample = tokenizer.decode(out[0, 1:].tolist())
        for logger in self.loggers:
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text):
                add_text("val/sample", self.last_sample, self.global_step)
        folder = run_folder(self.trainer)  # rank 0 alone is here: trainer.log_dir would be a one-sided collective
        if folder is not None:
            path = Path(folder) / "samples.txt"
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"--- step {self.global_step}\n{self.last_sample}\n\n")

    # -- the tokenizer travels with the run --------------------------------------------------------
    def _tokenizer(self) -> Any:
        return getattr(getattr(self._trainer, "datamodule", None), "tokenizer", None) if self._trainer else None

    def on_fit_start(self) -> None:
        folder, tokenizer = run_folder(self.trainer), self._tokenizer()
        described = describe_tokenizer(tokenizer) if tokenizer is not None else None
        if folder is not None and described is not None and described["kind"] == "bpe":
            Path(folder).mkdir(parents=True, exist_ok=True)
            write_atomic(Path(folder) / TOKENIZER_FILE, lambda f: f.write(described["json"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        described = describe_tokenizer(self._tokenizer())
        if described is not None:
            checkpoint[TOKENIZER_KEY] = described

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._trained_tokenizer = checkpoint.get(TOKENIZER_KEY)

    # -- ssmzoo predict: continuations of prompts -------------------------------------------------
    def prediction_loader(self, datamodule: Any, options: PredictOptions) -> Any:
        from torch.utils.data import DataLoader

        trained = getattr(self, "_trained_tokenizer", None)
        current = describe_tokenizer(getattr(datamodule, "tokenizer", None))
        if trained is not None and current is not None and trained != current:
            raise ValueError(f"{type(self).__name__}: the checkpoint was trained with another tokenizer "
                             f"({trained['kind']}) than the datamodule's ({current['kind']}); predict with the "
                             "data settings of the run (its config.yaml), or use `ssmzoo generate`, which reads the "
                             "run's own tokenizer")
        prompts = options.all_prompts()
        if not prompts:
            raise ValueError(f"{type(self).__name__}: ssmzoo predict continues prompts; give them with "
                             "--predictions.prompts '[\"To be\", \"O Romeo\"]' or --predictions.prompts_file FILE")
        return DataLoader(list(enumerate(prompts)), batch_size=1, collate_fn=lambda items: items)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        tokenizer = self._tokenizer()
        if tokenizer is None:
            raise ValueError(f"{type(self).__name__}: the datamodule has no tokenizer to encode the prompts")
        options: PredictOptions = self.predict_options
        device = next(self.model.parameters()).device
        records = []
        for index, prompt in batch:
            ids = [tokenizer.eos_id] + [int(i) for i in tokenizer.encode(prompt)]
            out = self.model.generate(torch.tensor([ids], device=device), max_new_tokens=options.max_new_tokens,
                                      do_sample=not options.greedy, temperature=options.temperature,
                                      top_k=options.top_k, top_p=options.top_p, seed=options.seed + index)
            records.append({"prompt": prompt, "continuation": tokenizer.decode(out[0, len(ids):].tolist()),
                            "new_tokens": int(out.shape[1] - len(ids))})
        return records

    def write_predictions(self, outputs: list[list[dict[str, Any]]], folder: Path, datamodule: Any,
                          options: PredictOptions) -> list[Path]:
        """``predictions.jsonl``: one ``{"prompt", "continuation", "new_tokens"}`` record per prompt."""
        records = [r for batch in outputs for r in batch]
        for r in records:
            print(f"--- {r['prompt']!r}\n{r['prompt']}{r['continuation']}")
        return [write_jsonl(folder / "predictions.jsonl", records)]

    @classmethod
    def summary(cls, results: dict[str, float | None]) -> str:
        if results.get("test_bpb") is None:
            return super().summary(results)
        line = f"test bits per byte {results['test_bpb']:.4f}"
        if results.get("test_ppl") is not None:
            line += f"   perplexity {results['test_ppl']:.3f} per token"
        return line


class RecallTask(_NextTokenTask):
    """Train and evaluate a causal model on the positions a synthetic task asks about (selective copying,
    induction heads, passkey retrieval: ``ssmzoo.data.synthetic``): cross-entropy there only.

    Args: as :class:`LanguageModelingTask`'s optimisation arguments.

    Logs ``train/loss`` and for ``val``/``test``: ``acc`` (asked tokens right), ``exact`` (sequences with every
    asked token right), ``loss``, ``ppl``. Checkpoints keep the highest ``val/acc``.
    """

    monitor = "val/acc"
    monitor_mode = "max"
    headline = {"test_acc": "test/acc", "test_exact": "test/exact"}
    sequence_metrics = True

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__(model, lr, weight_decay, warmup, betas, lr_schedule)

    # -- ssmzoo predict: the answers at the asked positions ----------------------------------------
    def prediction_loader(self, datamodule: Any, options: PredictOptions) -> Any:
        return split_loader(datamodule, options.split, type(self).__name__)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        input_ids, targets, extras, _ = self._unpack(batch)
        predicted = self(input_ids, **extras).argmax(-1)
        return {"targets": targets.cpu(), "predicted": predicted.cpu()}

    def write_predictions(self, outputs: list[dict[str, Tensor]], folder: Path, datamodule: Any,
                          options: PredictOptions) -> list[Path]:
        """``predictions.csv``: per sample and asked position the expected and the predicted token."""
        def rows() -> Any:
            sample = 0
            for o in outputs:
                for targets, predicted in zip(o["targets"], o["predicted"]):
                    for position in (targets != IGNORE_INDEX).nonzero().flatten().tolist():
                        yield [sample, position, int(targets[position]), int(predicted[position])]
                    sample += 1

        return [write_csv(folder / "predictions.csv", ["sample", "position", "target", "predicted"], rows())]

    @classmethod
    def summary(cls, results: dict[str, float | None]) -> str:
        if results.get("test_acc") is None:
            return super().summary(results)
        line = f"test accuracy {results['test_acc']:.4f}"
        if results.get("test_exact") is not None:
            line += f"   exact match {results['test_exact']:.4f}"
        return line
