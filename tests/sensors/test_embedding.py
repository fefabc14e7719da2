import numpy as np
import pytest

from sensors.embedding import TactileEmbedding, fit_pca
from sensors.tactile import GelPad
from sim.press_dataset import generate_press_dataset


def test_shipped_embedding_loads_by_name_and_round_trips_real_fields():
    emb = TactileEmbedding.load("default")
    assert emb.dim == 15 and emb.grid == (7, 9)
    pad = GelPad()
    field = pad.read(np.array([[0.002, -0.001]]), np.array([[3.0, -2.0, 12.0]]))
    z = emb.encode(field)
    assert z.shape == (15,)
    recon = emb.decode(z)
    err = np.linalg.norm(recon - field.offset) / np.linalg.norm(field.offset)
    assert err < 0.35  # one press the PCA never saw, reconstructed from 15 numbers
    batch = emb.encode(np.stack([field.offset] * 4))
    assert batch.shape == (4, 15)


def test_unknown_name_and_bad_shapes_and_corrupt_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="known names"):
        TactileEmbedding.load("no-such-embedding")
    emb = TactileEmbedding.load("default")
    with pytest.raises(ValueError, match=r"\(7, 9, 2\)"):
        emb.encode(np.zeros((5, 9, 2)))
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a valid tactile embedding"):
        TactileEmbedding.load(bad)


def test_fit_save_load_identity(tmp_path):
    x = generate_press_dataset(episodes=12, seed=3, progress=False)
    assert x.shape[1] == 7 * 9 * 2 and len(x) > 20
    emb = fit_pca(x, dim=5)
    path = tmp_path / "tiny.npz"
    emb.save(path, {"note": "test"})
    again = TactileEmbedding.load(path)
    np.testing.assert_allclose(again.encode(x.reshape(-1, 7, 9, 2)), emb.encode(x.reshape(-1, 7, 9, 2)))
    assert path.with_suffix(".json").is_file()


def test_pad_load_reads_shear_and_normal_load_off_the_embedding():
    emb = TactileEmbedding.load("default")
    pad = GelPad()

    def load(xy, force):
        field = pad.read(np.array([xy], float), np.array([force], float))
        return emb.pad_load(emb.encode(field.offset)), field.offset

    normals = [load((0.002, -0.001), (0.0, 0.0, f))[0][2] for f in (5.0, 15.0, 30.0)]
    assert normals[0] < normals[1] < normals[2]  # the field's divergence grows with the normal force
    (sx, sy, _), offset = load((0.0, 0.0), (3.0, -2.0, 15.0))
    assert sx > 0 > sy  # the mean marker shift follows the shear traction
    # It is the same linear functional of the reconstructed field, computed directly.
    rec = emb.decode(emb.encode(offset))
    div = (np.gradient(rec[..., 0], axis=1) + np.gradient(rec[..., 1], axis=0)).mean()
    np.testing.assert_allclose([sx, sy, _], [rec[..., 0].mean(), rec[..., 1].mean(), div], rtol=1e-6, atol=1e-12)
    batch = emb.pad_load(np.zeros((4, 6, emb.dim)))
    assert batch.shape == (4, 6, 3)
