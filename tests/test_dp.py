import numpy as np

from engine.federation.dp import privatize_update


def test_clipping_bound_holds_without_noise():
    rng = np.random.default_rng(0)
    glob = [rng.normal(size=(10, 10)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    local = [g + rng.normal(scale=3.0, size=g.shape).astype(np.float32) for g in glob]
    out, meta = privatize_update(local, glob, clip_norm=0.5, noise_multiplier=0.0, rng=rng)
    diffs = [o.astype(np.float64) - g for o, g in zip(out, glob, strict=True)]
    norm = np.sqrt(sum((d**2).sum() for d in diffs))
    assert meta["clipped"] and meta["update_norm"] > 0.5
    assert norm <= 0.5 + 1e-5


def test_small_update_is_not_scaled_and_noise_has_sigma_c():
    rng = np.random.default_rng(1)
    glob = [np.zeros(200_000, dtype=np.float32)]
    local = [np.full(200_000, 1e-4, dtype=np.float32)]
    out, meta = privatize_update(local, glob, clip_norm=2.0, noise_multiplier=0.5, rng=rng)
    assert not meta["clipped"]
    assert meta["noise_std"] == 1.0
    noise = out[0].astype(np.float64) - 1e-4
    assert abs(noise.std() - 1.0) < 0.01 and abs(noise.mean()) < 0.01


def test_integer_buffers_pass_through():
    glob = [np.zeros(3, np.float32), np.array(7, np.int64)]
    local = [np.ones(3, np.float32), np.array(9, np.int64)]
    out, _ = privatize_update(local, glob, 1.0, 1.0, np.random.default_rng(0))
    assert out[1] == 9 and out[1].dtype == np.int64
