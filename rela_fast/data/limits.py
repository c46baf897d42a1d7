"""Bounds on what a source may hand to the decoders and the trainer, so a hostile or damaged file
gives a one-line error instead of a hang or an attempt to allocate a terabyte.

* ``max_image_bytes()``: the largest encoded image (or IDX image) read, 64 MiB unless
  ``RELA_FAST_MAX_IMAGE_BYTES`` says otherwise (a 100-megapixel JPEG is about 30 MiB);
* ``max_idx_bytes()``: the largest decompressed IDX file, 8 GiB unless ``RELA_FAST_MAX_IDX_BYTES`` says
  otherwise (Fashion-MNIST's training images are 47 MB; a gzip bomb is stopped at this size or at the
  size its header declares, whichever is smaller);
* ``MAX_CLASSES``: labels are class ids ``0 <= label < MAX_CLASSES`` (the online classifier and the probe
  allocate one row per class).

Only regular files are ever opened as images: :func:`open_regular` refuses FIFOs (which would block),
devices (``/dev/zero`` never ends) and sockets, also behind symlinks, without reading from them.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_CLASSES = 1_000_000
IMAGE_BYTES_ENV = "RELA_FAST_MAX_IMAGE_BYTES"
IDX_BYTES_ENV = "RELA_FAST_MAX_IDX_BYTES"
_DEFAULT_IMAGE_BYTES = 64 << 20
_DEFAULT_IDX_BYTES = 8 << 30


def _env_bytes(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        from rela_fast.errors import UserError

        raise UserError(f"{name}={text!r}: must be a positive number of bytes")
    return value


def max_image_bytes() -> int:
    """The per-image size cap in bytes (``RELA_FAST_MAX_IMAGE_BYTES``, default 64 MiB)."""
    return _env_bytes(IMAGE_BYTES_ENV, _DEFAULT_IMAGE_BYTES)


def max_idx_bytes() -> int:
    """The cap on one decompressed IDX file in bytes (``RELA_FAST_MAX_IDX_BYTES``, default 8 GiB)."""
    return _env_bytes(IDX_BYTES_ENV, _DEFAULT_IDX_BYTES)


def file_kind(mode: int) -> str:
    """A word for the kind of file ``mode`` describes (for messages)."""
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return word
    return "not a regular file"


def not_regular(path: str) -> str | None:
    """None when ``path`` (symlinks followed) is a regular file or does not exist, else what it is."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


def read_regular(path: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` (default: :func:`max_image_bytes`).

    Opened non-blocking (a FIFO cannot hang the open) and checked with ``fstat`` before any read: a FIFO,
    device or socket raises ``OSError`` naming the path, as does a file over the cap.
    """
    limit = max_image_bytes() if limit is None else limit
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{file_kind(st.st_mode)}, not an image file; skipped", path)
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, over the {limit}-byte image cap "
                          f"({IMAGE_BYTES_ENV}); skipped", path)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise OSError(errno.EFBIG, f"grew over the {limit}-byte image cap while read; skipped", path)
        return b"".join(chunks)
    finally:
        os.close(fd)
