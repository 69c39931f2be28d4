"""The peak matmul throughput and the read bandwidth: measured once per machine (and dtype), then read back from
the JSON cache."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from alignkit.train.peak_flops import (
    measure_matmul_flops,
    measure_read_bandwidth,
    peak_bandwidth,
    peak_flops,
    peak_key,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))


def test_the_second_call_reads_the_cache():
    first = peak_flops(CPU, "float32", seconds=0.05)
    assert not first["cached"] and first["flops_per_second"] > 0
    record = json.loads(open(first["file"]).read())
    assert record["key"] == peak_key(CPU, "float32") and record["key"]["torch"] == torch.__version__
    second = peak_flops(CPU, "float32", seconds=0.05)
    assert second["cached"] and second["flops_per_second"] == first["flops_per_second"]
    assert peak_flops(CPU, "bfloat16", seconds=0.05)["file"] != first["file"]  # one entry per dtype


@pytest.mark.parametrize("content", [b"{not json", pickle.dumps({"flops_per_second": 1e30}), b"[]",
                                     b'{"flops_per_second": -1}', b'{"key": {}, "flops_per_second": 1e30}'])
def test_a_corrupt_or_foreign_cache_file_is_measured_again(content):
    path = peak_flops(CPU, "float32", seconds=0.05)["file"]
    with open(path, "wb") as f:
        f.write(content)
    again = peak_flops(CPU, "float32", seconds=0.05)
    assert not again["cached"] and 0 < again["flops_per_second"] < 1e30
    assert json.loads(open(path).read())["flops_per_second"] == again["flops_per_second"]


def test_the_benchmark_takes_the_size_it_is_given():
    flops, size = measure_matmul_flops(CPU, "float32", size=64, seconds=0.01)
    assert size == 64 and flops > 0


def test_the_read_bandwidth_is_measured_once_and_kept_apart_from_the_flops():
    first = peak_bandwidth(CPU, seconds=0.05)
    assert not first["cached"] and first["bytes_per_second"] > 0
    second = peak_bandwidth(CPU, seconds=0.05)
    assert second["cached"] and second["bytes_per_second"] == first["bytes_per_second"]
    assert first["file"] != peak_flops(CPU, "float32", seconds=0.05)["file"]
    with open(first["file"], "w") as f:
        f.write('{"bytes_per_second": "fast"}')
    assert not peak_bandwidth(CPU, seconds=0.05)["cached"]
    rate, size = measure_read_bandwidth(CPU, megabytes=4, seconds=0.01)
    assert size == 4 * 2**20 and rate > 0
