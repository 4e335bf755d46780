import pytest
import torch

import slimtorch as st
from slimtorch import zoo


def test_digits_models_train_to_a_sensible_accuracy(digits_cnn, digits_mlp):
    for model, data in (digits_cnn, digits_mlp):
        assert data.evaluate(model) > 0.95
    assert digits_cnn[1].example_inputs(4).shape == (4, 1, 16, 16)
    assert digits_mlp[1].example_inputs(4).shape == (4, 64)


def test_same_seed_gives_the_same_model(tmp_path, monkeypatch):
    entry = zoo.ENTRIES["digits-mlp"]
    a = zoo.train
    monkeypatch.setitem(zoo.ENTRIES, "digits-mlp", type(entry)(entry.build, entry.data, 1, entry.lr, entry.about))
    m1, _ = a("digits-mlp", seed=3)
    m2, _ = a("digits-mlp", seed=3)
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cache_is_used_on_second_load(tmp_path, monkeypatch, digits_mlp):
    model, _ = zoo.load("digits-mlp")
    torch.testing.assert_close(model(torch.ones(1, 64)), digits_mlp[0](torch.ones(1, 64)))


def test_unknown_zoo_name_suggests():
    with pytest.raises(st.ConfigError, match="did you mean 'digits-cnn'"):
        zoo.load("digit-cnn")
