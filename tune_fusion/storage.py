"""The file system a search writes its storage through: every file written whole or not at all.

Ray Tune copies its files to storage by overwriting them in place (the experiment's state every second, each
trial's ``result.json``, its error files) and writes each checkpoint file straight into its folder. On a full disk a
copy stops half way and leaves the file cut short: a truncated experiment state that ``--resume`` cannot read, a
trial's history emptied. Through ``whole_files`` each file is written beside its place and renamed over it once
complete; a write that fails removes its temporary file and leaves the previous version as it was.

Every byte reaches the disk inside ``write``, none is left for ``close``: pyarrow's ``copy_files`` ignores an error
raised when it closes a Python file, so a tail of bytes buffered until close that no longer fits would vanish
silently, and a checkpoint with it while its epoch is reported as saved. Writes are unbuffered, looped over partial
writes, and synced (NFS reports a full disk or quota only when the data is flushed).

Example:
    >>> tune.RunConfig(storage_path="/scratch/ray_results", storage_filesystem=whole_files("/scratch/ray_results"))
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs

from tune_fusion.names import is_uri

__all__ = ["whole_files"]


class _WholeOrNothing:
    """A file being written: to a temporary name beside ``path``, renamed to ``path`` when closed after every write
    succeeded, removed when one failed."""

    def __init__(self, path: str) -> None:
        folder, name = os.path.split(path)
        self.path, self.temporary = path, os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        self.handle = open(self.temporary, "wb", buffering=0)  # noqa: SIM115  (closed in close())

    def _guard(self, step: Any, *args: Any) -> Any:
        try:
            return step(*args)
        except BaseException:
            self._discard()  # at once: the error may be held (and this stream with it) long after
            raise

    def _discard(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        Path(self.temporary).unlink(missing_ok=True)

    def write(self, data: Any) -> int:
        return self._guard(self._write_through, memoryview(data).cast("B"))

    def _write_through(self, data: memoryview) -> int:
        done = 0
        while done < len(data):  # a raw write may take part of the bytes (the last ones that fit); the next one fails
            done += self.handle.write(data[done:])
        os.fsync(self.handle.fileno())
        return done

    def flush(self) -> None:
        self._guard(self.handle.flush)

    def tell(self) -> int:
        return self.handle.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self.handle.closed

    def close(self) -> None:
        if self.handle.closed:  # closed already, or discarded after a failed write
            return
        self._guard(self.handle.close)  # the last bytes reach the disk here, and may not fit
        os.replace(self.temporary, self.path)

    def __del__(self) -> None:  # a stream abandoned unclosed: nothing of it stays on the disk
        if not self.handle.closed:
            self._discard()


class _WholeFilesHandler(pyarrow.fs.FileSystemHandler):
    """The local file system, with output streams written whole or not at all (``_WholeOrNothing``)."""

    def __init__(self) -> None:
        self.fs = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _WholeFilesHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "local-whole-files"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root folder")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict | None) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_WholeOrNothing(path), mode="w")

    def open_append_stream(self, path: str, metadata: dict | None) -> pyarrow.NativeFile:
        return self.fs.open_append_stream(path, metadata=metadata)


def whole_files(storage: str) -> pyarrow.fs.FileSystem | None:
    """The file system Ray Tune writes a local ``storage`` through (None for s3:// and gs://, whose objects are
    written whole already)."""
    return None if is_uri(storage) else pyarrow.fs.PyFileSystem(_WholeFilesHandler())
