"""Sliding-window crops batched (``--batch-size N`` / ``--batch-memory MiB``) give exactly the one-crop scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.eval.batching import crops_for_budget
from segconvert.eval.protocols import Preprocessing, Runtime, get_protocol
from segconvert.weights.store import load_model
from tests.test_distributed_eval import _weights


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(_weights(tmp_path_factory.mktemp("crops"), 21), fuse=True)


@pytest.mark.parametrize("name", ["semseg", "pspnet"])  # flip fusions: softmax mean / summed logits
def test_batched_crops_give_the_one_crop_logits_bit_for_bit(model, name):
    image = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    proto = get_protocol(name, "voc", crop=32, base_size=64, flip=True).with_options(scales=(1.0,))
    assert len(proto.plan(40, 70)[0].windows) >= 3  # several crops, so batches of 2 and 3 pairs differ
    prep = Preprocessing.from_model(model)
    one = proto.predict(model, image, prep, Runtime(torch.device("cpu"), batch_size=1))
    for n in (2, 6):  # 1 and 3 flip pairs per forward
        got = proto.predict(model, image, prep, Runtime(torch.device("cpu"), batch_size=n))
        assert torch.equal(got, one), n
    rt = Runtime(torch.device("cpu"), batch_memory=4096.0)
    got = proto.predict(model, image, prep, rt)
    assert torch.equal(got, one)
    assert rt.fitted and rt.crops_per_forward >= 1


def test_the_budget_divides_by_the_measured_forward(model):
    crop = torch.zeros(1, 3, 32, 32)
    rt = Runtime(torch.device("cpu"))
    small, large = crops_for_budget(model, crop, rt, 1.0), crops_for_budget(model, crop, rt, 100000.0)
    assert small >= 1 and large >= small
    assert Runtime(torch.device("cpu"), batch_size=3, batch_memory=1e6).crops_per_forward == 3  # the count wins
