import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.pipeline import run_recipe
from slimtorch.recipe import Recipe


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    return model, batches


def test_stages_run_in_order_and_are_measured():
    model, batches = _setup()
    recipe = Recipe(stages=(st.Finetune(epochs=2, distill=False), st.Finetune(epochs=1)))
    record = run_recipe(model, recipe, data=batches, eval_fn=lambda m: 0.5)
    assert [s.stage for s in record.stages] == ["finetune", "finetune"]
    assert record.before.accuracy == 0.5 and record.after.params == record.before.params
    assert all(s.metrics is not None and s.layers for s in record.stages)
    data = record.to_dict()
    assert set(data) >= {"before", "after", "stages"}


def test_every_stage_goes_through_its_handler_and_fine_tuning_gets_the_recipes_teacher(monkeypatch):
    from slimtorch import handlers
    from slimtorch.train.finetune import Finetune

    teachers, applied = [], []
    real = dict(handlers.HANDLERS)
    for cls, fn in real.items():
        monkeypatch.setitem(handlers.HANDLERS, cls, lambda m, c, _fn=fn, **k: applied.append(type(c).__name__)
                            or _fn(m, c, **k))
    ft = real[Finetune]
    monkeypatch.setitem(handlers.HANDLERS, Finetune, lambda m, c, **k: applied.append("Finetune")
                        or teachers.append(k["teacher"]) or ft(m, c, **k))
    model, batches = _setup()
    # iterative structured pruning with recovery in between: prune, fine-tune, prune again, fine-tune
    stages = (st.StructuredPruning(ratio=0.25), st.Finetune(epochs=1), st.StructuredPruning(ratio=1 / 3),
              st.Finetune(epochs=1))
    run_recipe(model, Recipe(stages=stages), data=batches)
    assert applied == ["StructuredPruning", "Finetune", "StructuredPruning", "Finetune"]
    assert model[0].out_features == 16  # 32 -> 24 -> 16
    assert [t[0].out_features for t in teachers] == [32, 32]  # both distill from the unpruned model
    assert all(not p.requires_grad for p in teachers[0].parameters())


def test_missing_data_fails_before_any_work():
    model, _ = _setup()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(st.DataError, match=r"stage 1 \(finetune.finetune\) needs data"):
        st.compress(model, [st.Finetune()], example_inputs=torch.randn(2, 8))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_resume_continues_after_the_last_checkpoint(tmp_path, monkeypatch):
    model, batches = _setup()
    recipe = Recipe(stages=(st.Finetune(epochs=1, lr=1e-2), st.Finetune(epochs=1, lr=1e-3)))
    import slimtorch.pipeline as pipeline

    calls = []
    real = pipeline._apply_stage

    def interrupted(model, cfg, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt  # the run dies during stage 2
        calls.append(cfg)
        return real(model, cfg, **kwargs)

    monkeypatch.setattr(pipeline, "_apply_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(model, recipe, data=batches, out_dir=tmp_path, measure_stages=False)
    assert (tmp_path / "checkpoints" / "stage-01.safetensors").is_file()
    assert not (tmp_path / "checkpoints" / "stage-02.safetensors").exists()
    after_stage_1 = st.load(tmp_path / "checkpoints" / "stage-01", model=_setup()[0])

    monkeypatch.setattr(pipeline, "_apply_stage", lambda model, cfg, **kw: calls.append(cfg) or real(model, cfg, **kw))
    fresh, _ = _setup()
    record = run_recipe(fresh, recipe, data=batches, out_dir=tmp_path, resume=True, measure_stages=False)
    assert calls[-1] == recipe.stages[1] and len(calls) == 2  # only stage 2 ran again
    assert len(record.stages) == 2
    assert not torch.equal(fresh[0].weight, after_stage_1[0].weight)  # stage 2 trained on from stage 1


def test_resume_refuses_checkpoints_of_another_recipe(tmp_path):
    model, batches = _setup()
    run_recipe(model, Recipe(stages=(st.Finetune(epochs=1),)), data=batches, out_dir=tmp_path, measure_stages=False)
    with pytest.raises(st.ArtifactError, match="different recipe"):
        run_recipe(_setup()[0], Recipe(stages=(st.Finetune(epochs=2),)), data=batches, out_dir=tmp_path,
                   resume=True)


def test_original_stages_and_final_model_are_retimed_together(tmp_path, monkeypatch):
    import dataclasses

    import slimtorch.pipeline as pipeline

    seen = {}

    def fake_retime(entries, example_inputs):  # stands in for the timing: records who was timed together
        seen.update(entries)
        return {k: dataclasses.replace(m, latency_ms=float(i + 1)) for i, (k, (_, m)) in enumerate(entries.items())}

    monkeypatch.setattr(pipeline, "retime_side_by_side", fake_retime)
    model, batches = _setup()
    recipe = Recipe(stages=(st.Finetune(epochs=1), st.Finetune(epochs=1), st.Finetune(epochs=1)))
    record = run_recipe(model, recipe, data=batches, out_dir=tmp_path)
    # the original, the two checkpointed intermediate stages (rebuilt from their checkpoints) and the final model
    assert list(seen) == ["before", "stage 0", "stage 1", "after"]
    assert seen["after"][0] is model and seen["stage 0"][0] is not model
    assert record.before.latency_ms == 1.0 and record.after.latency_ms == 4.0
    assert [s.metrics["latency_ms"] for s in record.stages] == [2.0, 3.0, 4.0]
