"""A write that runs out of room (clmerge.experiment.atomic.atomic_write): a full disk
(ENOSPC), a file larger than the process may write (EFBIG, ``ulimit -f``) and a spent
quota (EDQUOT), raised by the OS or reported in a library's own words, each become one
NoRoomError naming the file and the bytes it needed; the temporary file is removed and
the file keeps what it held. (The fault table tries EFBIG for real under ``ulimit -f``;
ENOSPC on a full tmpfs was tried by hand: the same sentence.)"""

import errno

import pytest

from clmerge.experiment.atomic import NoRoomError, atomic_write


@pytest.mark.parametrize("raised,code,words", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC,
     "no space left on the device"),
    (OSError(errno.EFBIG, "File too large"), errno.EFBIG,
     "the file would be larger than this process may write (ulimit -f)"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT, "the disk quota is exceeded"),
    # safetensors reports the OS error as its own exception, in words
    (RuntimeError("Error while serializing: IoError(Os { code: 122, kind: "
                  "FilesystemQuotaExceeded, message: \"Disk quota exceeded\" })"),
     errno.EDQUOT, "the disk quota is exceeded"),
    (RuntimeError("I/O error: No space left on device (os error 28)"), errno.ENOSPC,
     "no space left on the device"),
])
def test_a_write_out_of_room_is_one_sentence_and_leaves_nothing(tmp_path, raised, code, words):
    target = tmp_path / "result.json"
    target.write_text("the previous result")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half of it")
        raise raised

    with pytest.raises(NoRoomError) as info:
        atomic_write(target, write, size=120_104)
    assert info.value.errno == code
    assert info.value.strerror == f"cannot write {target}: {words} (it needs 120,104 bytes)"
    assert info.value.filename == str(target)
    assert target.read_text() == "the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_any_other_error_is_not_called_a_full_disk(tmp_path):
    def write(tmp):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "x.json", write)
    assert not isinstance(info.value, NoRoomError) and info.value.errno == errno.EACCES
    assert list(tmp_path.iterdir()) == []
