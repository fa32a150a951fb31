#!/usr/bin/env python3
"""A FUSE file system that loses what was not fsynced: a power cut for tests.

    powercut_fs.py BACKING MOUNTPOINT

Mounts BACKING at MOUNTPOINT (foreground). Reads, directory operations and metadata pass
through to BACKING at once (create, rename, unlink, mkdir, truncate, chmod: as if the file
system's journal held them); the bytes written to a file are kept in this process's memory,
per inode, and reach BACKING only when the file is fsynced (fsync or fdatasync, on any of its
descriptors). Reads see what was written, as on a real disk's page cache.

A power cut is: SIGKILL every program writing under MOUNTPOINT, SIGKILL this process (what it
held is gone), then `fusermount3 -u -z MOUNTPOINT`. BACKING is then what a disk holds after
losing power at that moment, for file data: nothing that was not synced is there (a file
written but never synced reads as its last synced bytes, or is empty). Directory operations
are kept at once, as a journaling file system usually does: a missing directory fsync is not
caught.

Used by tests/up_live.rs (`pitboss up` across power cuts); needs fuse3 (Debian) and mfusepy
(PyPI), which scripts/stack.sh installs.
"""

import errno
import os
import sys
import threading

import mfusepy as fuse

BLOCK = 4096


class Dirty:
    """The unsynced writes of one inode: whole blocks, and the file's size as written."""

    __slots__ = ("blocks", "size", "path")

    def __init__(self, size, path):
        self.blocks = {}
        self.size = size
        self.path = path


class PowerCutFS(fuse.Operations):
    use_ns = True

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.mutex = threading.Lock()
        self.dirty = {}  # inode -> Dirty

    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    # -- metadata, passed through ------------------------------------------------------

    def getattr(self, path, fh=None):
        # Under the lock: an fsync between the stat and the look-up would give the size on disk
        # before the sync, and the kernel would cut reads short at it.
        with self.mutex:
            st = os.lstat(self._full(path)) if fh is None else os.fstat(fh)
            d = self.dirty.get(st.st_ino)
            size = st.st_size if d is None else d.size
        attrs = {
            key: getattr(st, key)
            for key in (
                "st_mode",
                "st_nlink",
                "st_uid",
                "st_gid",
                "st_size",
                "st_ino",
            )
        }
        attrs["st_atime"] = st.st_atime_ns
        attrs["st_mtime"] = st.st_mtime_ns
        attrs["st_ctime"] = st.st_ctime_ns
        attrs["st_size"] = size
        return attrs

    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            raise fuse.FuseOSError(errno.EACCES)

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path))

    def readlink(self, path):
        return os.readlink(self._full(path))

    def mkdir(self, path, mode):
        os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        os.rmdir(self._full(path))

    def chmod(self, path, mode):
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._full(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._full(path), ns=times)

    def symlink(self, target, source):
        os.symlink(source, self._full(target))

    def link(self, target, source):
        os.link(self._full(source), self._full(target))

    def unlink(self, path):
        full = self._full(path)
        with self.mutex:
            st = os.lstat(full)
            os.unlink(full)
            if st.st_nlink <= 1:
                self.dirty.pop(st.st_ino, None)

    def rename(self, old, new):
        with self.mutex:
            # A file replaced by the rename goes with what it held unsynced (its inode number
            # may be used again by a new file).
            try:
                replaced = os.lstat(self._full(new))
            except FileNotFoundError:
                replaced = None
            os.rename(self._full(old), self._full(new))
            if replaced is not None and replaced.st_nlink <= 1:
                if replaced.st_ino != os.lstat(self._full(new)).st_ino:
                    self.dirty.pop(replaced.st_ino, None)

    def statfs(self, path):
        sv = os.statvfs(self._full(path))
        return {
            key: getattr(sv, key)
            for key in (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
                "f_files",
                "f_flag",
                "f_frsize",
                "f_namemax",
            )
        }

    # -- files -----------------------------------------------------------------------------

    def open(self, path, flags):
        # Read and write are both needed to fill partial blocks; O_APPEND is the kernel's to
        # apply (it passes the offset). O_TRUNC comes here (libfuse 3 asks for atomic O_TRUNC):
        # applied as a truncate to 0, unsynced bytes included.
        full = self._full(path)
        keep = flags & ~(os.O_APPEND | os.O_TRUNC | os.O_ACCMODE | os.O_CREAT | os.O_EXCL)
        mode = os.O_RDWR if os.access(full, os.W_OK) else os.O_RDONLY
        fh = os.open(full, keep | mode)
        if flags & os.O_TRUNC:
            self.truncate(path, 0, fh)
        return fh

    def create(self, path, mode, flags=None):
        with self.mutex:
            fh = os.open(self._full(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
            # A new file: nothing held for an inode number used before.
            self.dirty.pop(os.fstat(fh).st_ino, None)
            return fh

    def release(self, path, fh):
        os.close(fh)

    def flush(self, path, fh):
        # close(2) does not sync: what was written stays unsynced.
        return 0

    def _state(self, fh):
        st = os.fstat(fh)
        d = self.dirty.get(st.st_ino)
        if d is None:
            d = Dirty(st.st_size, None)
            self.dirty[st.st_ino] = d
        return d

    def _base_block(self, fh, idx):
        raw = os.pread(fh, BLOCK, idx * BLOCK)
        block = bytearray(BLOCK)
        block[: len(raw)] = raw
        return block

    def read(self, path, size, offset, fh):
        with self.mutex:
            d = self.dirty.get(os.fstat(fh).st_ino)
            if d is None:
                return os.pread(fh, size, offset)
            end = min(offset + size, d.size)
            out = bytearray()
            pos = offset
            while pos < end:
                idx, at = divmod(pos, BLOCK)
                n = min(BLOCK - at, end - pos)
                block = d.blocks.get(idx)
                if block is None:
                    block = self._base_block(fh, idx)
                out += block[at : at + n]
                pos += n
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self.mutex:
            d = self._state(fh)
            pos = offset
            view = memoryview(data)
            while view:
                idx, at = divmod(pos, BLOCK)
                n = min(BLOCK - at, len(view))
                block = d.blocks.get(idx)
                if block is None:
                    block = self._base_block(fh, idx) if idx * BLOCK < d.size else bytearray(BLOCK)
                    d.blocks[idx] = block
                block[at : at + n] = view[:n]
                view = view[n:]
                pos += n
            d.size = max(d.size, offset + len(data))
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            if fh is None:
                ino = os.lstat(self._full(path)).st_ino
                os.truncate(self._full(path), length)
            else:
                ino = os.fstat(fh).st_ino
                os.ftruncate(fh, length)
            d = self.dirty.get(ino)
            if d is not None:
                d.size = length
                last, rest = divmod(length, BLOCK)
                for idx in [i for i in d.blocks if i > last or (i == last and rest == 0)]:
                    del d.blocks[idx]
                if rest and last in d.blocks:
                    d.blocks[last][rest:] = bytes(BLOCK - rest)

    def fsync(self, path, datasync, fh):
        with self.mutex:
            st = os.fstat(fh)
            d = self.dirty.pop(st.st_ino, None)
            if d is not None:
                for idx in sorted(d.blocks):
                    start = idx * BLOCK
                    if start >= d.size:
                        continue
                    os.pwrite(fh, bytes(d.blocks[idx][: min(BLOCK, d.size - start)]), start)
                if os.fstat(fh).st_size != d.size:
                    os.ftruncate(fh, d.size)
            os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: powercut_fs.py BACKING MOUNTPOINT")
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = PowerCutFS(backing)

    fuse.FUSE(fs, mountpoint, foreground=True, nothreads=False, fsname="powercut")


if __name__ == "__main__":
    main()
