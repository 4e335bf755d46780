"""RunRecord and StageRecord: to_dict gives plain values that survive a JSON round trip and rebuild the records."""

import dataclasses
import json

from slimtorch.measure.metrics import Metrics
from slimtorch.record import RunRecord, StageRecord


def _metrics(params, accuracy=None, label=""):
    return Metrics(params=params, nonzero_params=params // 2, size_bytes=4 * params, flops=2 * params, macs=params,
                   latency_ms=1.5, latency_p90_ms=2.25, peak_memory_bytes=1 << 20, accuracy=accuracy, batch_size=1,
                   threads=2, label=label)


def _stage(index=0, metrics=None):
    layers = [{"name": "fc1", "type": "Linear", "params": 100, "nonzero": 50, "sparsity": 0.5, "bits": 8,
               "rank": None}]
    return StageRecord(index=index, stage="prune", method="unstructured", config={"sparsity": 0.5, "scope": "global"},
                       seconds=0.25, metrics=metrics, layers=layers)


def test_stage_to_dict_holds_every_field_and_round_trips_through_json():
    stage = _stage(3, _metrics(100).to_dict())
    d = stage.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(StageRecord)]
    assert d["index"] == 3 and d["config"] == {"sparsity": 0.5, "scope": "global"} and d["metrics"]["params"] == 100
    back = json.loads(json.dumps(d))
    assert back == d
    assert StageRecord(**back) == stage


def test_stage_to_dict_is_a_copy_of_the_fields():
    stage = _stage()
    d = stage.to_dict()
    d["seconds"] = 99.0
    d["extra"] = 1
    assert stage.seconds == 0.25 and not hasattr(stage, "extra")


def test_empty_run_record_serialises_to_nulls_and_empty_lists():
    d = RunRecord(recipe={"stages": []}).to_dict()
    assert d == {"recipe": {"stages": []}, "before": None, "after": None, "stages": [], "layers_before": [],
                 "files": {}}
    assert json.loads(json.dumps(d)) == d


def test_default_lists_are_not_shared_between_records():
    a, b = RunRecord(recipe={}), RunRecord(recipe={})
    a.stages.append(_stage())
    a.files["json"] = "report.json"
    assert b.stages == [] and b.files == {}


def test_full_run_record_round_trips_through_json():
    before, after = _metrics(1000, 0.9, "before"), _metrics(400, 0.875, "after")
    stages = [_stage(0, _metrics(500).to_dict()), _stage(1, None)]
    record = RunRecord(recipe={"stages": [{"prune": {"sparsity": 0.5}}]}, before=before, after=after, stages=stages,
                       layers_before=[{"name": "fc1", "params": 100}], files={"json": "out/report.json"})
    text = json.dumps(record.to_dict())
    d = json.loads(text)
    assert d == record.to_dict()
    assert Metrics.from_dict(d["before"]) == before and Metrics.from_dict(d["after"]) == after
    assert d["after"]["accuracy"] == 0.875 and d["before"]["label"] == "before"
    assert [StageRecord(**s) for s in d["stages"]] == stages
    assert d["stages"][1]["metrics"] is None
    rebuilt = RunRecord(recipe=d["recipe"], before=Metrics.from_dict(d["before"]),
                        after=Metrics.from_dict(d["after"]), stages=[StageRecord(**s) for s in d["stages"]],
                        layers_before=d["layers_before"], files=d["files"])
    assert rebuilt == record


def test_only_one_side_measured():
    d = RunRecord(recipe={}, after=_metrics(10)).to_dict()
    assert d["before"] is None and d["after"]["params"] == 10
