"""finetune: learns, distills, matches features, stops early on a validation metric, keeps masks."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.train.finetune import frozen_copy


def task(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def accuracy(model, batches):
    with torch.no_grad():
        return sum(float((model(x).argmax(1) == y).float().sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def test_training_reduces_the_loss_and_is_seeded():
    data = task()
    a = st.finetune(net(), data, epochs=4, config=st.Finetune(lr=1e-2))
    b = st.finetune(net(), data, epochs=4, config=st.Finetune(lr=1e-2))
    losses = a._slim_history.losses
    assert losses[-1] < 0.6 * losses[0]
    assert losses == b._slim_history.losses
    assert accuracy(a, task(seed=1)) > 0.9 and not a.training


def hidden_gap(student, teacher, x):
    with torch.no_grad():
        return float((student[:3](x) - teacher[:3](x)).pow(2).mean())


def test_distillation_and_feature_matching_pull_the_student_to_the_teacher():
    data = task()
    teacher = frozen_copy(st.finetune(net(), data, epochs=5, config=st.Finetune(lr=1e-2)))
    x = torch.cat([b[0] for b in task(seed=2)])
    student = net()
    before = hidden_gap(student, teacher, x)
    cfg = st.Finetune(epochs=6, lr=1e-2, alpha=1.0, feature_layers=("2",), feature_weight=1.0)
    st.finetune(student, data, teacher=teacher, config=cfg)
    assert hidden_gap(student, teacher, x) < 0.5 * before
    with torch.no_grad():
        assert (student(x).argmax(1) == teacher(x).argmax(1)).float().mean() > 0.9


def test_feature_matching_errors():
    with pytest.raises(st.ConfigError, match="teacher"):
        st.finetune(net(), task(), config=st.Finetune(feature_layers=("2",)))
    with pytest.raises(st.ConfigError, match="fc9"):
        st.finetune(net(), task(), teacher=net(), config=st.Finetune(feature_layers=("fc9",)))
    other = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(st.ConfigError, match="'2' gives"):
        st.finetune(other, task(), teacher=net(), config=st.Finetune(feature_layers=("2",)))


def test_early_stopping_restores_the_best_epoch():
    data = task()
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])
    snapshots = []

    def metric(model):
        snapshots.append(model[0].weight.detach().clone())
        return next(scores)

    model = st.finetune(net(), data, epochs=6, config=st.Finetune(lr=1e-2, patience=2), eval_fn=metric)
    h = model._slim_history
    assert h.stopped_early and h.metrics == [0.5, 0.9, 0.8, 0.7] and h.best_epoch == 2
    assert torch.equal(model[0].weight, snapshots[1])


def test_early_stopping_uses_the_data_objects_evaluate():
    class Data:
        train = task()
        calls = 0

        def evaluate(self, model):
            Data.calls += 1
            return 1.0

    st.finetune(net(), Data(), epochs=3, config=st.Finetune(patience=1))
    assert Data.calls == 2  # epoch 1 best, epoch 2 no better -> stop
    with pytest.raises(st.ConfigError, match="eval_fn"):
        st.finetune(net(), task(), config=st.Finetune(patience=1))


def test_masks_hold_through_finetuning():
    model = st.prune(net(), st.UnstructuredPruning(sparsity=0.8, scope="layer"))
    zeros = int((model[2].weight == 0).sum())
    st.finetune(model, task(), epochs=2, config=st.Finetune(lr=1e-2, optimizer="sgd", weight_decay=1e-3))
    assert int((model[2].weight == 0).sum()) == zeros


@pytest.mark.parametrize(("kwargs", "match"), [({"epochs": -1}, "epochs"), ({"patience": 0}, "patience"),
                                               ({"alpha": 2.0}, "alpha"), ({"feature_weight": -1.0}, "feature")])
def test_bad_configs(kwargs, match):
    with pytest.raises(st.ConfigError, match=match):
        st.Finetune(**kwargs)


def test_unlabelled_data_is_refused():
    with pytest.raises(st.DataError, match="labelled"):
        st.finetune(net(), [torch.randn(4, 10)], epochs=1)


@pytest.mark.slow
def test_zoo_cnn_90_percent_sparse_with_distillation_within_one_point(digits_cnn):
    import copy

    dense, data = digits_cnn
    base = data.evaluate(dense)
    model = copy.deepcopy(dense)
    st.prune(model, st.UnstructuredPruning(sparsity=0.9, scope="global"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is several times faster on a shared 2-core box
    try:
        st.finetune(model, data, teacher=frozen_copy(dense), epochs=2, config=st.Finetune(lr=1e-3))
    finally:
        torch.set_num_threads(threads)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(int((m.weight == 0).sum()) for m in convs) == round(0.9 * sum(m.weight.numel() for m in convs))
    assert data.evaluate(model) >= base - 0.01


def test_a_pruned_model_loaded_from_disk_keeps_its_zeros(tmp_path):
    model = st.make_permanent(st.prune(net(), st.UnstructuredPruning(sparsity=0.8, scope="layer")))
    path = st.save(model, tmp_path / "pruned")
    loaded = st.load(path, net())
    zeros = int((loaded[2].weight == 0).sum())
    st.finetune(loaded, task(), epochs=1, config=st.Finetune(lr=1e-2))
    assert int((loaded[2].weight == 0).sum()) == zeros
    dense = st.finetune(net(), task(), epochs=1, config=st.Finetune(lr=1e-2))  # dense layers: no masks
    assert not any(hasattr(m, "slim_mask") for m in dense.modules())


def test_same_seed_same_run_even_after_the_loader_was_used():
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.cat([b[0] for b in task()])
    y = torch.cat([b[1] for b in task()])
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    a = st.finetune(net(), loader, epochs=2, seed=4)
    list(loader)  # advances the loader's own generator
    b = st.finetune(net(), loader, epochs=2, seed=4)
    assert a._slim_history.losses == b._slim_history.losses
    assert torch.equal(a[0].weight, b[0].weight)


def test_finetune_refuses_nan_weights_and_materialises_lazy_layers():
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    bad = nn.Linear(4, 2)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(st.DataError, match="weight"):
        st.finetune(bad, batches, epochs=1)
    lazy = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2))
    st.finetune(lazy, batches, epochs=1)
    assert type(lazy[0]) is nn.Linear and lazy[0].weight.shape == (3, 4)
