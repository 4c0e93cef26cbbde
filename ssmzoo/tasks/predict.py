"""What ``ssmzoo predict`` predicts, and the files it writes (one per task kind, into the run folder).

Every task implements three methods that the ``ssmzoo`` command calls:

- ``prediction_loader(datamodule, options)``: the batches to predict (a split's loader, or the prompts);
- ``predict_step(batch, batch_idx)``: a dict of CPU tensors or strings per batch;
- ``write_predictions(outputs, folder, datamodule, options)``: the files, returned as paths.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class PredictOptions:
    """The flags of ``ssmzoo predict``.

    Args:
        split: the datamodule split whose samples are predicted (classification, forecasting, recall tasks).
        prompts: texts a language model continues (one line each in predictions.jsonl).
        prompts_file: a text file of prompts, one per line (added to ``prompts``).
        max_new_tokens: tokens generated per prompt.
        temperature, top_k, top_p: sampling (top_k 0, top_p 0: off).
        greedy: the most likely token at every step instead of sampling.
        seed: seeds the sampling of each prompt (prompt i uses seed + i).
    """

    split: Literal["train", "val", "test"] = "test"
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.0
    greedy: bool = False
    seed: int = 0

    def all_prompts(self) -> list[str]:
        prompts = list(self.prompts)
        if self.prompts_file:
            path = Path(self.prompts_file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--predictions.prompts_file {path}: no such file")
            prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return prompts


def split_loader(datamodule: Any, split: str, owner: str) -> Any:
    """The datamodule's ``<split>_dataloader()``, or an error naming what it lacks."""
    method = getattr(datamodule, f"{split}_dataloader", None)
    if datamodule is None or not callable(method):
        raise ValueError(f"{owner}: the datamodule has no {split}_dataloader to predict on (--predictions.split)")
    return method()


def write_atomic(path: Path, write: Any, mode: str = "w") -> Path:
    """Write a file through ``write(f)`` into a temporary file in the same folder, fsync, then rename."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with open(partial, mode, newline="" if "b" not in mode else None, encoding=None if "b" in mode else "utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    def write(f: Any) -> None:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)

    return write_atomic(path, write)


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    return write_atomic(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
