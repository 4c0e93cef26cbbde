import pytest
import torch

from ssmzoo import layers
from ssmzoo.optim import param_groups


def test_build_by_name_and_errors():
    assert "s4d" in layers.available()
    layer = layers.build("s4d", d_model=4, d_state=4)
    assert isinstance(layer, layers.S4D) and layer.d_model == 4
    with pytest.raises(ValueError, match="unknown layer 'nope'.*s4d"):
        layers.build("nope", d_model=4)
    with pytest.raises(ValueError, match="no argument.*'d_stat'.*d_state"):
        layers.build("s4d", d_model=4, d_stat=4)


def test_param_groups_follow_tags():
    layer = layers.build("s4d", d_model=4, d_state=4, lr=1e-3)
    groups = param_groups(layer, lr=1e-2, weight_decay=0.05)
    by_name = {n: g for g in groups for n in g["names"]}
    for ssm in ("log_dt", "log_A_real", "A_imag", "B"):
        assert by_name[ssm]["lr"] == 1e-3 and by_name[ssm]["weight_decay"] == 0.0
    assert by_name["C"]["lr"] == 1e-2 and by_name["C"]["weight_decay"] == 0.05
    assert by_name["out.proj.0.bias"]["weight_decay"] == 0.0  # biases never decay
    assert sum(len(g["params"]) for g in groups) == len(list(layer.parameters()))
    torch.optim.AdamW(groups)  # the groups are valid optimiser input
