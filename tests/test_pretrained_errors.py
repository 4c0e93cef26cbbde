"""``LanguageModel.from_pretrained`` on damaged, inconsistent or hostile checkpoint folders: each is a ValueError
(or FileNotFoundError) naming the file, the config key or the tensor; nothing outside the folder is read and
nothing in it runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmzoo.models import LanguageModel

VOCAB = 50


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A Hugging Face Mamba folder (config.json, model.safetensors) and the model written to it."""
    torch.manual_seed(0)
    model = LanguageModel(vocab_size=VOCAB, d_model=16, n_layers=2, layer="mamba", layer_args={"d_state": 4}).eval()
    folder = model.save_pretrained(tmp_path_factory.mktemp("saved") / "hf", format="mamba")
    return folder, model


@pytest.fixture
def folder(saved, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(saved[0], copy)
    return copy


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def edit_weights(folder: Path, edit) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_error(folder: Path, error=ValueError) -> str:
    with pytest.raises(error) as raised:
        LanguageModel.from_pretrained(folder)
    return " ".join(str(raised.value).split())


def test_the_untouched_folder_loads(saved, folder):
    loaded = LanguageModel.from_pretrained(folder)
    tokens = torch.randint(0, VOCAB, (1, 7))
    torch.testing.assert_close(loaded(tokens), saved[1](tokens), rtol=0, atol=0)


# -- config.json ------------------------------------------------------------------------------------
def test_truncated_config(folder):
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    assert f"{folder / 'config.json'} is not valid JSON" in load_error(folder)


@pytest.mark.parametrize("content,kind", [("[1, 2]", "list"), ('"mamba"', "str"), ("7", "int"), ("null", "NoneType")])
def test_config_that_is_not_an_object(folder, content, kind):
    (folder / "config.json").write_text(content)
    assert f"config.json holds a JSON {kind}, not an object" in load_error(folder)


def test_config_that_is_not_text(folder):
    (folder / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    assert "config.json is not valid JSON" in load_error(folder)


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers"])
def test_config_missing_a_required_key(folder, key):
    edit_config(folder, **{key: None})
    assert f"config.json lacks '{key}', which a Hugging Face Mamba checkpoint" in load_error(folder)


def test_mamba_ssm_config_missing_n_layer(saved, tmp_path):
    folder = saved[1].save_pretrained(tmp_path / "ms", format="mamba_ssm.Mamba1")
    edit_config(folder, n_layer=None)
    assert "config.json lacks 'n_layer', which a mamba-ssm MambaLMHeadModel checkpoint" in load_error(folder)


def test_config_with_a_value_of_the_wrong_type_names_the_key(folder):
    edit_config(folder, num_hidden_layers="2")
    assert "(config.json: num_hidden_layers)" in load_error(folder)


@pytest.mark.parametrize(
    "changes,key,fit,tensor",
    [
        ({"state_size": 8}, "state_size", 4, "backbone.layers.0.mixer.A_log"),
        ({"conv_kernel": 3}, "conv_kernel", 4, "backbone.layers.0.mixer.conv1d.weight"),
        ({"time_step_rank": 3}, "time_step_rank", 1, "backbone.layers.0.mixer.dt_proj.weight"),
        ({"hidden_size": 24, "intermediate_size": 48}, "hidden_size", 16, "backbone.embeddings.weight"),
        ({"num_hidden_layers": 3}, "num_hidden_layers", 2, "backbone.layers.2."),
        ({"num_hidden_layers": 1}, "num_hidden_layers", 2, "backbone.layers.1."),
    ],
)
def test_config_that_disagrees_with_the_weights_names_the_key(folder, changes, key, fit, tensor):
    edit_config(folder, **changes)
    message = load_error(folder)
    assert f"config.json has {key}={changes[key]}, but the weights were made with {key}={fit}" in message
    assert tensor in message  # and the tensor, under the file's own name


def test_ssmzoo_format_disagreement_names_layer_args_key(tmp_path):
    model = LanguageModel(vocab_size=VOCAB, d_model=16, n_layers=2, layer="s4d", layer_args={"d_state": 8})
    folder = model.save_pretrained(tmp_path / "ours", format="ssmzoo")
    edit_config(folder, layer_args={"d_state": 16})
    assert "config.json has layer_args.d_state=16, but the weights were made with layer_args.d_state=8" in \
        load_error(folder)
    edit_config(folder, layer_args={"d_state": 8}, d_model=None)
    assert "config.json lacks 'd_model', which an ssmzoo checkpoint" in load_error(folder)


# -- the weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,says", [
    (lambda data: data[: len(data) // 2], "is not a readable safetensors file, it is truncated or damaged"),
    (lambda data: data[:7], "is not a readable safetensors file"),
    (lambda data: b"", "is empty (0 bytes)"),
    (lambda data: b"this is not a safetensors file at all" * 4, "is not a readable safetensors file"),
    (lambda data: os.urandom(len(data)), "is not a readable safetensors file"),
])
def test_damaged_safetensors_names_the_file(folder, damage, says):
    path = folder / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    assert f"{path} {says}" in load_error(folder)


def test_missing_tensor_is_named_with_the_format(folder):
    edit_weights(folder, lambda w: w.pop("backbone.layers.1.mixer.D"))
    message = load_error(folder)
    assert "missing tensors: backbone.layers.1.mixer.D" in message
    assert 'a Hugging Face Mamba checkpoint (model_type "mamba")' in message


def test_missing_embedding_is_named(folder):
    edit_weights(folder, lambda w: w.pop("backbone.embeddings.weight"))
    assert "backbone.embeddings.weight (vocabulary, width) is missing" in load_error(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_by_name(folder, value):
    def poison(w):
        w["backbone.layers.1.mixer.D"][3] = value
        w["backbone.norm_f.weight"][0] = value

    edit_weights(folder, poison)
    message = load_error(folder)
    assert "holds NaN or infinite weights in" in message
    assert "backbone.layers.1.mixer.D" in message and "backbone.norm_f.weight" in message


# -- shards ----------------------------------------------------------------------------------------
def shard(folder: Path, names: dict[str, str]) -> None:
    """Replace model.safetensors by shards: tensor -> the file name in the index."""
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    for file in set(names.values()):
        path = folder / file
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v for k, v in weights.items() if names[k] == file}, str(path), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))


def test_sharded_folder_loads(saved, folder):
    names = {k: ("model-00001-of-00002.safetensors" if "layers.0" in k else "model-00002-of-00002.safetensors")
             for k in load_file(str(folder / "model.safetensors"))}
    shard(folder, names)
    tokens = torch.randint(0, VOCAB, (1, 5))
    torch.testing.assert_close(LanguageModel.from_pretrained(folder)(tokens), saved[1](tokens), rtol=0, atol=0)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_shards_outside_the_folder_are_refused(folder, tmp_path, where):
    weights = load_file(str(folder / "model.safetensors"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    save_file(weights, str(elsewhere / "model.safetensors"), metadata={"format": "pt"})
    (folder / "model.safetensors").unlink()
    if where == "symlink":  # a name inside the folder, a file outside it
        (folder / "shard.safetensors").symlink_to(elsewhere / "model.safetensors")
        name = "shard.safetensors"
    else:
        name = "../elsewhere/model.safetensors" if where == "parent" else str(elsewhere / "model.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: name for k in weights}}))
    message = load_error(folder)
    assert f"names the shard {name!r}, which is not a file inside {folder.resolve()}" in message


def test_missing_shard_and_bad_index(folder):
    names = {k: "model-00001-of-00001.safetensors" for k in load_file(str(folder / "model.safetensors"))}
    shard(folder, names)
    (folder / "model-00001-of-00001.safetensors").unlink()
    assert "names the shard 'model-00001-of-00001.safetensors', but" in load_error(folder, FileNotFoundError)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
    assert "model.safetensors.index.json is not valid JSON" in load_error(folder)
    (folder / "model.safetensors.index.json").write_text('{"weights": {}}')
    assert 'has no "weight_map" object' in load_error(folder)


# -- pytorch_model.bin -----------------------------------------------------------------------------
class _Runs:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_crafted_pytorch_model_bin_is_refused_with_the_legacy_default(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch < 2.6's default: unpickle anything
    folder = saved[1].save_pretrained(tmp_path / "ms", format="mamba_ssm.Mamba1")
    marker = tmp_path / "ran"
    weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**weights, "payload": _Runs(os.system, f"touch {marker}")}, folder / "pytorch_model.bin")
    assert "pytorch_model.bin is refused: it holds objects other than tensors" in load_error(folder)
    assert not marker.exists()


def test_truncated_pytorch_model_bin_names_the_file(saved, tmp_path):
    folder = saved[1].save_pretrained(tmp_path / "ms", format="mamba_ssm.Mamba1")
    path = folder / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    assert f"{path} is not a readable PyTorch file, it is truncated or damaged" in load_error(folder)
