import pytest

from training.durable import fsync_dir, fsync_tree, write_bytes_durably


def test_write_bytes_durably_creates_and_replaces(tmp_path):
    target = tmp_path / "upload.bin"
    write_bytes_durably(target, b"first")
    write_bytes_durably(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["upload.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "upload.bin"
    write_bytes_durably(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("training.durable.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_durably(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["upload.bin"]


def test_fsync_helpers(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    fsync_dir(tmp_path)
    fsync_tree(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "a" / "b" / "f")
