"""The one file-hashing helper gives the SHA-256 of the whole file, however big."""

import hashlib

from mpoxscan.hashing import file_sha256


def test_file_sha256_is_the_sha256_of_all_the_bytes(tmp_path):
    data = bytes(range(256)) * 9000  # over two 1 MiB chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == file_sha256(path)
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
