"""Each aggregation rule against hand-made arrays."""

import numpy as np
import pytest

from engine.core.config import FederationConfig
from engine.federation.aggregators import (
    Bulyan,
    FedAvg,
    FedMedian,
    Krum,
    TrimmedMean,
    make_aggregator,
)


def client(*values, n=1):
    return ([np.array(values, dtype=np.float32), np.array([[values[0]]], dtype=np.float32)], n)


def test_fedavg_weights_by_examples():
    out = FedAvg()([client(0.0, 0.0, n=1), client(4.0, 8.0, n=3)])
    np.testing.assert_allclose(out[0], [3.0, 6.0])
    assert out[0].dtype == np.float32


def test_median_ignores_one_outlier():
    out = FedMedian()([client(1.0, 2.0), client(1.2, 2.2), client(1000.0, -1000.0)])
    np.testing.assert_allclose(out[0], [1.2, 2.0])


def test_trimmed_mean_cuts_extremes():
    results = [client(v) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    out = TrimmedMean(beta=0.2)(results)
    np.testing.assert_allclose(out[0], [3.0])


def test_krum_picks_an_honest_update_and_multikrum_averages_honest_ones():
    honest = [client(1.0, 1.0), client(1.1, 0.9), client(0.9, 1.1), client(1.05, 1.0)]
    attack = client(50.0, -50.0)
    out = Krum(num_malicious=1)(honest + [attack])
    assert np.abs(out[0] - 1.0).max() < 0.2
    multi = Krum(name="multikrum", num_malicious=1, to_keep=3)(honest + [attack])
    assert np.abs(multi[0] - 1.0).max() < 0.2


def test_krum_and_bulyan_refuse_too_few_clients():
    with pytest.raises(ValueError, match="more than 4 clients"):
        Krum(num_malicious=1)([client(1.0)] * 4)
    with pytest.raises(ValueError, match="at least 7 clients"):
        Bulyan(num_malicious=1)([client(1.0)] * 6)


def test_bulyan_resists_an_outlier():
    honest = [client(1.0 + 0.01 * i, 2.0 - 0.01 * i) for i in range(6)]
    out = Bulyan(num_malicious=1)(honest + [client(1e4, -1e4)])
    assert np.abs(out[0] - np.array([1.03, 1.97])).max() < 0.05


def test_integer_buffers_keep_their_dtype():
    a = ([np.array([1.0]), np.array(3, dtype=np.int64)], 1)
    b = ([np.array([3.0]), np.array(5, dtype=np.int64)], 1)
    out = FedAvg()([a, b])
    assert out[1].dtype == np.int64 and int(out[1]) == 4


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedmedian", "trimmed_mean", "krum",
                                  "multikrum", "bulyan"])
def test_factory_returns_named_rule(name):
    fed = FederationConfig(aggregator=name, fedprox_mu=0.01 if name == "fedprox" else 0.0)
    assert make_aggregator(fed).name == name
