"""What every ssmzoo task declares for training runs: the metric its checkpoints and early stopping follow,
and the test metrics that headline its results."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from lightning.pytorch import LightningModule
from torch import nn


class Task(LightningModule):
    """A LightningModule that says how its runs are judged.

    Class attributes (read by the ``ssmzoo`` command before anything is built):
        monitor: the validation metric the best checkpoint and early stopping follow (e.g. ``"val/acc"``).
        monitor_mode: ``"max"`` when higher is better, ``"min"`` when lower is.
        headline: results key -> logged test metric, the numbers ``results.json`` leads with.

    A task takes its network as the constructor argument ``model``: the ``ssmzoo`` command links the values
    the data decides (classes, vocabulary, channels, lookback, horizon) into that network's arguments
    (``ssmzoo.cli.app.DATA_LINKS``).
    """

    monitor: ClassVar[str]
    monitor_mode: ClassVar[Literal["min", "max"]]
    headline: ClassVar[dict[str, str]]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = None, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, reading with ``weights_only=True`` unless the caller passes
        ``weights_only=False``: on torch < 2.6 (which ``pyproject.toml`` allows) Lightning's default unpickles
        anything, so a crafted checkpoint would run code."""
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=True if weights_only is None else weights_only,
                                            **kwargs)

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (FSDP2, ``torch.distributed.fsdp.fully_shard``): shards every
        element of the network's ``layers`` on its own, then the network, over the data-parallel devices; the
        parameters' optimiser tags (``ssmzoo.layers.base.tag_param``: the SSM parameters' lr and weight decay) carry
        over to the sharded parameters (by name: ``param_tags_by_name``). Under every other strategy (the device mesh is None): nothing to do."""
        mesh, network = self.device_mesh, getattr(self, "model", None)
        if mesh is None or not isinstance(network, nn.Module):
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(network, FSDPModule):  # configure_model runs again for a test after fit
            return
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
            raise ValueError(f"{type(self).__name__}: ssmzoo shards its networks data-parallel only (FSDP2); give "
                             "ModelParallelStrategy tensor_parallel_size=1 and data_parallel_size=<number of "
                             f"processes>, got a tensor-parallel size of {mesh['tensor_parallel'].size()}")
        data = mesh["data_parallel"] if "data_parallel" in names else mesh
        tags = {name: p._optim for name, p in network.named_parameters() if hasattr(p, "_optim")}
        for element in getattr(network, "layers", ()):
            fully_shard(element, mesh=data)
        fully_shard(network, mesh=data)
        # The sharded parameters are new objects, and Lightning's move to the device after this hook makes new ones
        # again, without the tags: they are kept by name, where ssmzoo.optim.param_groups reads them too.
        network.param_tags_by_name = tags

    @classmethod
    def summary(cls, results: dict[str, float | None]) -> str:
        """One line naming the headline results (``results`` holds the ``headline`` keys)."""
        return "   ".join(f"{key} {value:.4g}" for key, value in results.items() if value is not None)


def run_folder(trainer: Any) -> str | None:
    """The run's folder on the global-zero process (None on the others), as ``trainer.log_dir`` names it but
    without its broadcast: that is a collective under DDP, so asking it on rank 0 alone (as code that writes a
    file does) hangs or kills the run."""
    if trainer is None or not trainer.is_global_zero:
        return None
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = trainer.loggers
    if not loggers:
        return trainer.default_root_dir
    first = loggers[0]
    return first.log_dir if isinstance(first, (TensorBoardLogger, CSVLogger)) else first.save_dir
