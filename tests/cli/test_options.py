"""Parse-time checks of command-line values (each an argparse ``type=``)."""

import argparse

import pytest

from slimtorch.cli import options


def test_shape_reads_positive_integers_and_refuses_empty_parts():
    assert options.shape("1,3,224,224") == (1, 3, 224, 224)
    assert options.shape("1x3x8x8") == (1, 3, 8, 8)
    assert options.shape("2, 16") == (2, 16)
    for bad, message in [("1,3,x", "empty part"), ("1,,3", "empty part"), ("", "empty part"), ("1,3,", "empty part"),
                         ("1,0", "'0' is not a positive"), ("1,2.5", "'2.5' is not a positive")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            options.shape(bad)


def test_counts_and_seeds():
    assert options.positive_int("32") == 32 and options.seed("0") == 0
    for fn, bad in [(options.positive_int, "0"), (options.positive_int, "-1"), (options.positive_int, "1e3"),
                    (options.seed, "-2"), (options.seed, "one")]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)


def test_paths_to_read_and_to_write(tmp_path):
    file = tmp_path / "w.pt"
    file.write_bytes(b"x")
    assert options.existing_file(str(file)) == file
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        options.existing_file(str(tmp_path))
    assert options.output_file(str(tmp_path / "new" / "deeper" / "m.json")).name == "m.json"
    with pytest.raises(argparse.ArgumentTypeError, match="is a file, not a folder"):
        options.output_file(str(file / "m.json"))
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        options.output_file(str(tmp_path))
    assert options.output_folder(str(tmp_path / "out")) == tmp_path / "out"
    with pytest.raises(argparse.ArgumentTypeError, match="is a file; give a folder"):
        options.output_folder(str(file))
    with pytest.raises(argparse.ArgumentTypeError, match="must name a .onnx file"):
        options.onnx_file(str(tmp_path / "m.pt"))


def test_recipes_and_model_and_data_specs(tmp_path):
    assert options.recipe("builtin:demo").name == "demo"
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        options.recipe(str(tmp_path))
    assert options.model_spec("torch.nn:Identity") == "torch.nn:Identity"
    with pytest.raises(argparse.ArgumentTypeError, match="has no config.json"):
        options.model_spec(str(tmp_path))
    assert options.data_spec(str(tmp_path)) == str(tmp_path)
    with pytest.raises(argparse.ArgumentTypeError, match="must look like 'package.module:function'"):
        options.data_spec("a-b:c")
