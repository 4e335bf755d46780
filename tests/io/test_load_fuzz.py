"""``slimtorch.load`` under fuzzing: every mutated file raises ArtifactError or loads exactly the saved state.

The saved model holds the layers whose manifest entries and storage forms the loader parses: a dynamic int8
``QuantLinear``, a packed int4 weight-only ``QuantLinear`` (groups of 32), two mostly-zero linears stored sparse
(bitmask and position forms), a block removed by layer pruning (``Skip``), a plain linear and a ReLU. The
mutations cover the 8-byte header length, the safetensors JSON header (invalid JSON, dtypes, shapes, data
offsets, missing and extra keys), the slimtorch manifest (version, formats, bits, group sizes, shapes, sparse
fields, the module tree; also re-signed with a valid checksum, so that the checks behind the checksum are
exercised too), truncation and byte flips in the data region.
"""

import json
import signal
import struct
from contextlib import contextmanager

import hypothesis.strategies as hs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from safetensors.torch import load as load_safetensors
from torch import nn

import slimtorch as st
from slimtorch.io.save import digest
from slimtorch.prune.layers import Skip

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "U16", "I8", "U8", "BOOL", "F8_E4M3", "C64", "XX", ""]
LOAD_SECONDS = 10


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, x):
        return x + self.fc(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_dyn = nn.Linear(16, 32)
        self.q_w4 = nn.Linear(32, 32)
        self.block = Block()
        self.sparse_bits = nn.Linear(32, 64)
        self.sparse_index = nn.Linear(64, 32, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = self.block(self.q_w4(self.q_dyn(x)))
        return self.head(self.act(self.sparse_index(self.sparse_bits(x))))


def compressed_net() -> nn.Module:
    torch.manual_seed(0)
    model = Net().eval()
    st.quantize(model, st.DynamicQuant(), select=["q_dyn"])
    st.quantize(model, st.WeightOnlyQuant(bits=4, group_size=32), select=["q_w4"])
    model.block = Skip()  # what LayerPruning leaves in place of a removed block
    with torch.no_grad():
        model.sparse_bits.weight.mul_(torch.rand(64, 32) < 0.2)  # stored as bitmask + values
        model.sparse_index.weight.mul_(torch.rand(32, 64) < 0.01)  # stored as positions + values
    return model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """(file bytes, the saved model's state, a path to write mutated files to)."""
    model = compressed_net()
    folder = tmp_path_factory.mktemp("fuzz")
    path = st.save(model, folder / "net")
    manifest = json.loads(split(path.read_bytes())[1]["__metadata__"]["slimtorch"])
    assert manifest["sparse"]["sparse_bits.weight"]["form"] == "bits"
    assert manifest["sparse"]["sparse_index.weight"]["form"] == "index"
    return path.read_bytes(), model.state_dict(), folder / "mutated.safetensors"


def split(blob: bytes) -> tuple[int, dict, bytes]:
    """(header length, safetensors JSON header, data region) of a well-formed file."""
    n = struct.unpack("<Q", blob[:8])[0]
    return n, json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def with_manifest(blob: bytes, manifest: dict, *, resign: bool) -> bytes:
    """The file with ``manifest`` in its header, its checksum recomputed when ``resign`` (a crafted file)."""
    _, header, data = split(blob)
    if resign:
        signed = {k: v for k, v in manifest.items() if k != "sha256"}
        manifest = {**manifest, "sha256": digest(load_safetensors(blob), signed)}
    header["__metadata__"]["slimtorch"] = json.dumps(manifest)
    return join(header, data)


class Hang(BaseException):
    """Raised when a load runs past its time (a BaseException, so that no ``except Exception`` swallows it)."""


@contextmanager
def deadline(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"load ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load_or_artifact_error(blob: bytes, state: dict, path) -> str:
    """Load ``blob``: it must raise ArtifactError (returns its message) or load exactly ``state`` (returns "")."""
    path.write_bytes(blob)
    with deadline(LOAD_SECONDS):
        try:
            loaded = st.load(path, model=Net())
        except st.ArtifactError as err:
            return str(err)
    got = loaded.state_dict()
    assert got.keys() == state.keys()
    for name, value in state.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
    return ""


# ---- mutation strategies: each draws a mutated file from the saved one ----

@hs.composite
def header_length(draw, blob: bytes) -> bytes:
    n = struct.unpack("<Q", blob[:8])[0]
    value = draw(hs.sampled_from([0, 1, 7, n - 8, n - 1, n + 1, n + 8, len(blob) - 8, len(blob), 100_000_001,
                                  2**32, 2**63, 2**64 - 1]) | hs.integers(0, 2**64 - 1))
    return struct.pack("<Q", value) + blob[8:]


@hs.composite
def json_header(draw, blob: bytes) -> bytes:
    n, header, data = split(blob)
    names = sorted(k for k in header if k != "__metadata__")
    kind = draw(hs.sampled_from(["garbage", "bytes", "dtype", "shape", "offsets", "drop", "extra", "type"]))
    if kind == "garbage":
        return join(draw(hs.sampled_from([b"{", b"[]", b"null", b'{"a": 1}', b"[" * 5000, b"\xff\xfe"])
                         | hs.binary(max_size=64)), data)
    if kind == "bytes":
        raw = bytearray(blob[8 : 8 + n])
        for _ in range(draw(hs.integers(1, 4))):
            raw[draw(hs.integers(0, n - 1))] = draw(hs.integers(0, 255))
        return blob[:8] + bytes(raw) + data
    name = draw(hs.sampled_from(names))
    entry = header[name]
    if kind == "dtype":
        entry["dtype"] = draw(hs.sampled_from(DTYPES))
    elif kind == "shape":
        entry["shape"] = draw(hs.lists(hs.integers(0, 70), max_size=4) | hs.just([2**40, 2**40]))
    elif kind == "offsets":
        start, end = entry["data_offsets"]
        other = header[draw(hs.sampled_from(names))]["data_offsets"]
        entry["data_offsets"] = draw(hs.sampled_from([
            [end, start], [start, start], [start - 1, end], [start, end + 1], [start + 1, end + 1], other,
            [0, len(data)], [start, len(data) + 8], [2**63, 2**63 + 4], [-1, end],
        ]))
    elif kind == "drop":
        del header[name]
    elif kind == "extra":
        header[name + "_extra"] = dict(entry)
    else:
        header[name] = draw(hs.sampled_from([None, 3, "F32", [], {"dtype": "F32"}]))
    return join(header, data)


@hs.composite
def manifest_fields(draw, blob: bytes) -> bytes:
    manifest = json.loads(split(blob)[1]["__metadata__"]["slimtorch"])
    kind = draw(hs.sampled_from(["version", "top", "module", "args", "sparse", "tied", "attrs", "tree"]))
    junk = hs.sampled_from([None, True, -1, 0, 3, 2**70, 1.5, "x", [], {}, [1, 2], {"a": 1}])
    if kind == "version":
        manifest["version"] = draw(hs.sampled_from([0, 1, 2, 4, -3, "3", None, 3.0, True]))
    elif kind == "top":
        key = draw(hs.sampled_from(["format", "modules", "attrs", "tied", "sparse", "training", "sha256", "tree",
                                    "extra", "versions", "new_field"]))
        if draw(hs.booleans()) and key in manifest:
            del manifest[key]
        else:
            manifest[key] = draw(junk)
    elif kind == "module":
        name = draw(hs.sampled_from(sorted(manifest["modules"])))
        manifest["modules"][name] = draw(hs.sampled_from([
            {"type": "QuantLinear", "args": {}}, {"type": "Skip", "args": {}}, {"type": "torch.nn.Identity"},
            {"type": "torch.nn.Linear", "args": {"in_features": 2**40, "out_features": 2**40}},
            {"type": "SparseLinear", "args": {"in_features": 2**31, "out_features": 2**31}},
            {"type": "os.system", "args": {"command": "echo hi"}}, {"args": {}}, None, "Linear",
        ]))
    elif kind == "args":
        name = draw(hs.sampled_from(sorted(manifest["modules"])))
        args = manifest["modules"][name]["args"]
        if args:
            key = draw(hs.sampled_from(sorted(args) + ["unknown"]))
            args[key] = draw(junk | hs.sampled_from([2, 4, 8, 16, 31, 64, 2**40, "static", "weight_only", "dynamic"]))
    elif kind == "sparse":
        name = draw(hs.sampled_from(sorted(manifest["sparse"])))
        entry = manifest["sparse"][name]
        field = draw(hs.sampled_from(["shape", "form", "whole", "rename"]))
        if field == "shape":
            entry["shape"] = draw(hs.lists(hs.integers(0, 80), max_size=3) | hs.just([2**31, 2**31]) | junk)
        elif field == "form":
            entry["form"] = draw(hs.sampled_from(["bits", "index", "csr", None]))
        elif field == "whole":
            manifest["sparse"][name] = draw(junk | hs.just([64, 32]))
        else:
            manifest["sparse"]["head.weight"] = manifest["sparse"].pop(name)
    elif kind == "tied":
        manifest["tied"] = draw(hs.sampled_from([{"head.weight": "head.bias"}, {"a": "b"}, {"q_w4.bias": "x"},
                                                 {"head.bias": "head.bias"}]))
    elif kind == "attrs":
        manifest["attrs"] = draw(hs.sampled_from([{"": {"training": 5}}, {"head": {"weight": 3}},
                                                  {"head": {"in_features": 7}}, {"nope": {"x": 1}},
                                                  {"act": {"_modules": 1}}, {"": {"forward": 1}}]))
    else:
        rows = manifest["tree"]["modules"]
        i = draw(hs.integers(0, len(rows) - 1))
        change = draw(hs.sampled_from(["drop", "rename", "retype", "index"]))
        if change == "drop":
            rows.pop(i)
        elif change == "rename":
            rows[i][0] = rows[i][0] + ".x"
        elif change == "retype":
            rows[i][1] = draw(hs.integers(0, len(manifest["tree"]["types"]) - 1))
        else:
            rows[i][1] = draw(hs.sampled_from([-1, 999, "0", None]))
    return with_manifest(blob, manifest, resign=draw(hs.booleans()))


@hs.composite
def truncated(draw, blob: bytes) -> bytes:
    return blob[: draw(hs.integers(0, len(blob) - 1))]


@hs.composite
def flipped(draw, blob: bytes) -> bytes:
    n = struct.unpack("<Q", blob[:8])[0]
    out = bytearray(blob)
    for _ in range(draw(hs.integers(1, 3))):
        i = draw(hs.integers(8 + n, len(blob) - 1))
        out[i] ^= draw(hs.integers(1, 255))
    return bytes(out)


MUTATIONS = [header_length, json_header, manifest_fields, truncated, flipped]


def mutated(blob: bytes):
    return hs.one_of([strategy(blob) for strategy in MUTATIONS])


def fuzz(artifact, examples: int) -> None:
    blob, state, path = artifact

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(hs.data())
    def run(data):
        load_or_artifact_error(data.draw(mutated(blob)), state, path)

    run()


def test_mutated_files_raise_artifact_error_or_load_exactly(artifact):
    fuzz(artifact, examples=1000)


@pytest.mark.slow
def test_mutated_files_raise_artifact_error_or_load_exactly_many(artifact):
    fuzz(artifact, examples=5000)


def test_the_unmutated_file_loads_exactly(artifact):
    blob, state, path = artifact
    assert load_or_artifact_error(blob, state, path) == ""


@pytest.mark.parametrize("strategy", MUTATIONS, ids=lambda s: s.__name__)
def test_each_kind_of_mutation_is_refused_with_a_named_cause(artifact, strategy):
    """A few examples per mutation family, so that each family runs even when one_of favours others."""
    fuzz_one = settings(max_examples=25, deadline=None, database=None,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    blob, state, path = artifact

    @fuzz_one
    @given(hs.data())
    def run(data):
        load_or_artifact_error(data.draw(strategy(blob)), state, path)

    run()


def test_a_flipped_data_byte_fails_the_checksum(artifact):
    blob, state, path = artifact
    data = bytearray(blob)
    data[-5] ^= 0x10
    assert "checksum" in load_or_artifact_error(bytes(data), state, path)


def test_an_edited_manifest_fails_the_checksum(artifact):
    blob, state, path = artifact
    manifest = json.loads(split(blob)[1]["__metadata__"]["slimtorch"])
    manifest["modules"]["q_dyn"]["args"]["relu"] = True  # same tensors, another computation
    assert "checksum" in load_or_artifact_error(with_manifest(blob, manifest, resign=False), state, path)


def test_a_crafted_manifest_cannot_name_arbitrary_types(artifact):
    blob, state, path = artifact
    manifest = json.loads(split(blob)[1]["__metadata__"]["slimtorch"])
    manifest["modules"]["head"] = {"type": "os.system", "args": {"command": "echo hi"}}
    assert "does not know" in load_or_artifact_error(with_manifest(blob, manifest, resign=True), state, path)


def test_a_crafted_huge_module_is_refused_before_it_is_allocated(artifact):
    blob, state, path = artifact
    manifest = json.loads(split(blob)[1]["__metadata__"]["slimtorch"])
    manifest["modules"]["head"]["args"].update(in_features=2**20, out_features=2**20)  # 4 TiB of float32
    message = load_or_artifact_error(with_manifest(blob, manifest, resign=True), state, path)
    assert "'head'" in message and "bytes" in message


def test_the_fuzzed_model_round_trips_with_identical_outputs(tmp_path):
    model = compressed_net()
    loaded = st.load(st.save(model, tmp_path / "copy"), model=Net())
    x = torch.randn(3, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_manifest_v2_file_without_the_tree_still_loads(artifact, caplog):
    """Files written before the module tree was recorded: the tensors alone were signed, no tree is checked."""
    blob, state, path = artifact
    manifest = json.loads(split(blob)[1]["__metadata__"]["slimtorch"])
    del manifest["tree"]
    manifest.update(version=2, sha256=digest(load_safetensors(blob)))
    v2 = with_manifest(blob, manifest, resign=False)
    with caplog.at_level("INFO", logger="slimtorch"):
        assert load_or_artifact_error(v2, state, path) == ""
    assert "records no module tree" in caplog.text
    path.write_bytes(v2)
    with pytest.raises(st.ArtifactError, match="the saved model has a module 'q_dyn' .* the model given has none"):
        st.load(path, model=nn.Sequential(nn.Linear(16, 32)))


def test_crafted_megabyte_long_module_names_are_refused_quickly(artifact):
    blob, state, path = artifact
    manifest = json.loads(split(blob)[1]["__metadata__"]["slimtorch"])
    deep = "q_dyn." + ".".join(["a"] * 500_000)  # 1 MB, half a million levels
    manifest["modules"][deep] = {"type": "Skip", "args": {}}
    manifest["modules"][deep + ".b"] = {"type": "Skip", "args": {}}
    manifest["tree"]["modules"] += [[deep, 0], [deep + ".b", 0]]
    assert "the model given has none there" in load_or_artifact_error(with_manifest(blob, manifest, resign=True), state,
                                                                      path)
