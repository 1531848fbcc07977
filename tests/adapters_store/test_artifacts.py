import io
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from adapters_store.artifacts import AdapterArtifactStore, content_sha256, unpack_upload
from adapters_store.errors import GraftError, Invalid, TooLarge, Unsupported

CONFIG = b'{"peft_type": "LORA", "r": 8}'
WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"w" * 1000
LIMIT = 1 << 20
ADAPTER = {"adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS}


def upload_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"upload-{len(list(tmp_path.glob('upload-*')))}"
    path.write_bytes(data)
    return path


def make_tar(tmp_path: Path, members: dict[str, bytes], gz: bool = True, extra=()) -> Path:
    """members maps names to bytes; extra holds ready TarInfo objects (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return upload_file(tmp_path, buffer.getvalue())


def make_zip(tmp_path: Path, members: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return upload_file(tmp_path, buffer.getvalue())


def unpack(tmp_path: Path, files, **limits) -> Path:
    dest = tmp_path / "dest"
    unpack_upload(files, dest, max_total_bytes=limits.pop("max_total_bytes", LIMIT), **limits)
    return dest


KIND_OF_STATUS = {400: Invalid, 413: TooLarge, 415: Unsupported}


def refused(tmp_path: Path, files, status: int, check: str, **limits) -> GraftError:
    with pytest.raises(GraftError) as info:
        unpack(tmp_path, files, **limits)
    assert (type(info.value), info.value.code) == (KIND_OF_STATUS[status], check), info.value.message
    assert not any((tmp_path / "dest").iterdir()), "a refused upload leaves no files behind"
    return info.value


def loose(tmp_path: Path, members: dict[str, bytes]) -> list[tuple[str, Path]]:
    return [(name, upload_file(tmp_path, data)) for name, data in members.items()]


def assert_adapter(dest: Path, readme: bool = False) -> None:
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted([*ADAPTER, *(["README.md"] if readme else [])])
    for name, data in ADAPTER.items():
        assert (dest / name).read_bytes() == data


def test_two_loose_files(tmp_path):
    assert_adapter(unpack(tmp_path, loose(tmp_path, ADAPTER)))


def test_loose_files_with_readme(tmp_path):
    assert_adapter(unpack(tmp_path, loose(tmp_path, {**ADAPTER, "README.md": b"# hi"})), readme=True)


@pytest.mark.parametrize("name", ["notes.txt", "../adapter_config.json", "x/adapter_config.json", ""])
def test_unknown_loose_file_name(tmp_path, name):
    refused(tmp_path, loose(tmp_path, {**ADAPTER, name: b"x"}), 400, "unknown_file")


def test_loose_pickle_refused(tmp_path):
    files = loose(tmp_path, {"adapter_config.json": CONFIG, "adapter_model.bin": b"\x80\x04"})
    refused(tmp_path, files, 415, "pickle_refused")


def test_loose_missing_weights(tmp_path):
    refused(tmp_path, loose(tmp_path, {"adapter_config.json": CONFIG}), 400, "missing_weights")


def test_loose_missing_config(tmp_path):
    refused(tmp_path, loose(tmp_path, {"adapter_model.safetensors": WEIGHTS}), 400, "missing_config")


def test_loose_files_too_large(tmp_path):
    refused(tmp_path, loose(tmp_path, ADAPTER), 413, "too_large", max_total_bytes=500)


@pytest.mark.parametrize("name", ["adapter.tar.gz", "adapter.tgz"])
def test_tar_gz_with_one_folder(tmp_path, name):
    members = {f"my-adapter/{n}": d for n, d in ADAPTER.items()}
    archive = make_tar(tmp_path, {**members, "my-adapter/training_args.json": b"{}"})
    assert_adapter(unpack(tmp_path, [(name, archive)]))


def test_plain_tar_with_dot_prefix(tmp_path):
    archive = make_tar(tmp_path, {f"./{n}": d for n, d in ADAPTER.items()}, gz=False)
    assert_adapter(unpack(tmp_path, [("adapter.tar", archive)]))


def test_zip_with_readme(tmp_path):
    archive = make_zip(tmp_path, {**ADAPTER, "README.md": b"# hi", "__MACOSX/x/._README.md": b"junk"})
    assert_adapter(unpack(tmp_path, [("adapter.zip", archive)]), readme=True)


@pytest.mark.parametrize("evil", ["../adapter_config.json", "a/../../adapter_config.json", "..\\x"])
def test_dotdot_path_refused(tmp_path, evil):
    members = {**ADAPTER, evil: b"x"}
    refused(tmp_path, [("a.tgz", make_tar(tmp_path, members))], 400, "unsafe_path")
    refused(tmp_path, [("a.zip", make_zip(tmp_path, members))], 400, "unsafe_path")


def test_absolute_path_refused(tmp_path):
    members = {**ADAPTER, "/etc/adapter_config.json": b"x"}
    refused(tmp_path, [("a.tar.gz", make_tar(tmp_path, members))], 400, "unsafe_path")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_link_and_device_members_refused(tmp_path, kind):
    link = tarfile.TarInfo("adapter_model.safetensors")
    link.type = kind
    link.linkname = "/etc/passwd"
    archive = make_tar(tmp_path, {"adapter_config.json": CONFIG}, extra=[link])
    refused(tmp_path, [("a.tgz", archive)], 400, "unsafe_member")


def test_zip_symlink_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("adapter_config.json", CONFIG)
        link = zipfile.ZipInfo("adapter_model.safetensors")
        link.external_attr = (0o120777 << 16)  # S_IFLNK
        archive.writestr(link, "/etc/passwd")
    refused(tmp_path, [("a.zip", upload_file(tmp_path, buffer.getvalue()))], 400, "unsafe_member")


def test_too_many_members(tmp_path):
    members = {**ADAPTER, **{f"extra-{i}.txt": b"" for i in range(10)}}
    refused(tmp_path, [("a.tgz", make_tar(tmp_path, members))], 413, "too_many_members", max_members=8)
    refused(tmp_path, [("a.zip", make_zip(tmp_path, members))], 413, "too_many_members", max_members=8)


def test_oversize_member_refused_from_header(tmp_path):
    members = {**ADAPTER, "adapter_model.safetensors": bytes(4 * LIMIT)}  # compresses to ~4 KB
    refused(tmp_path, [("a.tgz", make_tar(tmp_path, members))], 413, "too_large")
    refused(tmp_path, [("a.zip", make_zip(tmp_path, members))], 413, "too_large")


def test_zip_bomb_with_lying_sizes_is_cut_off(tmp_path):
    archive = make_zip(tmp_path, {"adapter_config.json": CONFIG, "adapter_model.safetensors": bytes(4 * LIMIT)})
    data = bytearray(archive.read_bytes())
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:  # claim every member is 100 bytes
            struct.pack_into("<I", data, start + size_at, 100)
            start += 4
    archive.write_bytes(bytes(data))
    with pytest.raises((Invalid, TooLarge)):  # zipfile stops at the claimed size: CRC error
        unpack(tmp_path, [("bomb.zip", archive)])
    assert not any((tmp_path / "dest").iterdir())


def test_tar_stream_bomb_in_a_pax_header_is_cut_off(tmp_path):
    # tarfile reads a pax header whole into memory: the decompressed stream itself is capped.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("adapter_config.json")
        info.size = len(CONFIG)
        info.pax_headers = {"comment": "x" * (8 * LIMIT)}
        tar.addfile(info, io.BytesIO(CONFIG))
    archive = upload_file(tmp_path, buffer.getvalue())
    refused(tmp_path, [("a.tgz", archive)], 413, "too_large", max_members=4)


def test_two_folder_levels_refused(tmp_path):
    members = {f"a/b/{n}": d for n, d in ADAPTER.items()}
    refused(tmp_path, [("a.tgz", make_tar(tmp_path, members))], 400, "archive_layout")


def test_files_in_two_folders_refused(tmp_path):
    members = {"a/adapter_config.json": CONFIG, "b/adapter_model.safetensors": WEIGHTS}
    refused(tmp_path, [("a.zip", make_zip(tmp_path, members))], 400, "archive_layout")


def test_pickle_member_refused(tmp_path):
    members = {"adapter_config.json": CONFIG, "adapter/adapter_model.bin": b"\x80\x04"}
    refused(tmp_path, [("a.zip", make_zip(tmp_path, members))], 415, "pickle_refused")


def test_corrupt_archive(tmp_path):
    archive = make_tar(tmp_path, ADAPTER)
    archive.write_bytes(archive.read_bytes()[:40])
    refused(tmp_path, [("a.tgz", archive)], 400, "bad_archive")
    refused(tmp_path, [("a.zip", upload_file(tmp_path, b"PK\x03\x04 not a zip"))], 400, "bad_archive")


def test_other_archive_format_unsupported(tmp_path):
    refused(tmp_path, [("adapter.7z", upload_file(tmp_path, b"7z"))], 415, "unsupported_archive")


# ---- content addressing and the store ----------------------------------------------------

def staged(tmp_path: Path, name: str, files=ADAPTER) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    return folder


def test_content_sha256_is_stable(tmp_path):
    one = staged(tmp_path, "one")
    two = staged(tmp_path, "two", dict(reversed(ADAPTER.items())))
    assert content_sha256(one) == content_sha256(two)
    assert len(content_sha256(one)) == 64
    (two / "adapter_config.json").write_bytes(CONFIG.replace(b"8", b"9"))
    assert content_sha256(one) != content_sha256(two)
    renamed = staged(tmp_path, "renamed", {"README.md": CONFIG, "adapter_model.safetensors": WEIGHTS})
    assert content_sha256(renamed) != content_sha256(one)


def test_store_moves_staging_into_place_durably(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    store = AdapterArtifactStore(tmp_path / "store")
    staging = store.new_staging()
    for name, data in ADAPTER.items():
        (staging / name).write_bytes(data)
    digest, final = store.store("support-bot", staging)
    assert final == store.path_for(digest) == tmp_path / "store" / digest
    assert_adapter(final)
    assert not staging.exists()
    assert digest == content_sha256(final)
    # Files are fsynced before the rename (under the staging name), then the folders.
    assert {str(staging / name) for name in ADAPTER} <= set(synced)
    assert str(staging) in synced and str(tmp_path / "store") in synced


def test_store_same_content_twice_reuses_it(tmp_path):
    store = AdapterArtifactStore(tmp_path / "store")
    digest, final = store.store("a", staged(tmp_path, "first"))
    inode = (final / "adapter_model.safetensors").stat().st_ino
    second = staged(tmp_path, "second")
    assert store.store("b", second) == (digest, final)
    assert not second.exists()
    assert (final / "adapter_model.safetensors").stat().st_ino == inode
    other, other_final = store.store("a", staged(tmp_path, "third", {**ADAPTER, "README.md": b"v2"}))
    assert other != digest and other_final.is_dir()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted([".staging", digest, other])


def test_remove_and_path_for(tmp_path):
    store = AdapterArtifactStore(tmp_path / "store")
    digest, final = store.store("a", staged(tmp_path, "first"))
    store.remove(digest)
    assert not final.exists()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".staging"]
    store.remove(digest)  # idempotent
    for bad in ["../etc", "ABC", digest.upper(), digest + "/x"]:
        with pytest.raises(ValueError):
            store.path_for(bad)


def test_sweep_leftovers(tmp_path):
    store = AdapterArtifactStore(tmp_path / "store")
    digest, final = store.store("a", staged(tmp_path, "first"))
    stale = store.new_staging()
    (tmp_path / "store" / ".trash-x").mkdir()
    store.sweep_leftovers(older_than_s=-1)
    assert not stale.exists() and not (tmp_path / "store" / ".trash-x").exists()
    assert final.is_dir()


def test_real_adapter_archive_unpacked_validated_and_stored(good_lora, base_model_dir, tmp_path):
    from adapters_store.validation import BaseModelShapes, validate_adapter

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(good_lora, arcname="my-lora")
    store = AdapterArtifactStore(tmp_path / "store")
    staging = store.new_staging()
    unpack_upload([("my-lora.tgz", upload_file(tmp_path, buffer.getvalue()))], staging, max_total_bytes=64 << 20)
    info = validate_adapter(staging, BaseModelShapes(base_model_dir), max_rank=16)
    digest, final = store.store("my-lora", staging)
    assert info.rank == 8
    assert (final / "adapter_model.safetensors").read_bytes() == (good_lora / "adapter_model.safetensors").read_bytes()
