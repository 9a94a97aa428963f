"""What training writes into a bucket, against the real emulator (``conftest.gcs_emulator``):

* ``paths.copytree`` (the best-probe checkpoint's copy, a damaged step moved aside) moves no
  bytes through the host: local files are hard-linked, objects are copied by the store;
* ``npz`` files (feature caches) go to a bucket as a stream and come back equal;
* TensorBoard events: each flush uploads a new, closed event file once; an uploaded object is
  never rewritten, and TensorFlow's reader finds every event across the files.
"""

import os

import numpy as np

from bbg_jax import paths, summaries


def _tree(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "x.bin").write_bytes(b"x" * 1000)
    (root / "a" / "b" / "y.json").write_text('{"y": 1}')
    (root / "top").write_bytes(b"")


def test_local_copy_is_hard_links(tmp_path):
    _tree(tmp_path / "src")
    paths.copytree(tmp_path / "src", tmp_path / "dst")
    for rel in ("a/x.bin", "a/b/y.json", "top"):
        src, dst = tmp_path / "src" / rel, tmp_path / "dst" / rel
        assert dst.read_bytes() == src.read_bytes()
        assert os.stat(dst).st_ino == os.stat(src).st_ino, rel
    # Deleting the source (the retention policy) leaves the copy whole.
    paths.rmtree(tmp_path / "src")
    assert (tmp_path / "dst" / "a" / "x.bin").read_bytes() == b"x" * 1000


def test_bucket_copy_and_streamed_npz(gcs_bucket, tmp_path, monkeypatch):
    _tree(tmp_path / "src")
    src, dst = f"{gcs_bucket}/src", f"{gcs_bucket}/dst"
    for f in (tmp_path / "src").rglob("*"):
        if f.is_file():
            paths.path(f"{src}/{f.relative_to(tmp_path / 'src')}").write_bytes(f.read_bytes())
    # Any read of an object's bytes through this host during the copy fails the test.
    monkeypatch.setattr(paths.epath.Path, "read_bytes", lambda self: (_ for _ in ()).throw(
        AssertionError(f"{self} read through the host")))
    paths.copytree(src, dst)
    monkeypatch.undo()
    for rel in ("a/x.bin", "a/b/y.json", "top"):
        assert paths.path(f"{dst}/{rel}").read_bytes() == (tmp_path / "src" / rel).read_bytes()

    arrays = {"x": np.arange(100_000, dtype=np.float32).reshape(1000, 100),
              "label": np.arange(1000, dtype=np.int32)}
    paths.save_npz(f"{gcs_bucket}/features/f.npz", arrays)
    back = paths.load_npz(f"{gcs_bucket}/features/f.npz")
    assert set(back) == set(arrays)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)


def test_event_files_are_uploaded_once_each(gcs_bucket, tmp_path):
    import gcsfs
    import tensorflow as tf

    fs = gcsfs.GCSFileSystem(token="anon")
    workdir = f"{gcs_bucket}/run"
    writer = summaries.create_writer(workdir)
    generations = {}
    for step in range(1, 4):
        writer.write_scalars(step, {"loss": float(step)})
        writer.write_images(step, {"sheet": np.full((1, 8, 8, 3), step * 50, np.uint8)})
        writer.flush()
        fs.invalidate_cache()
        files = sorted(fs.ls(workdir.removeprefix("gs://")))
        assert len(files) == step, files
        for f in files:
            generations.setdefault(f, fs.info(f)["generation"])
            assert fs.info(f)["generation"] == generations[f], f  # never uploaded again
    writer.flush()  # nothing written since: no new file
    writer.close()
    fs.invalidate_cache()
    assert len(fs.ls(workdir.removeprefix("gs://"))) == 3

    losses = {}
    for f in generations:
        data = fs.cat(f)
        path = tmp_path / os.path.basename(f)
        path.write_bytes(data)
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.tag == "loss":
                    losses[event.step] = float(tf.make_ndarray(v.tensor))
        path.unlink()
    assert losses == {1: 1.0, 2: 2.0, 3: 3.0}
