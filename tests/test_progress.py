"""Progress output suits where it goes: a plain line every few seconds in a log, never carriage-return frames."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

from rela_fast.progress import LineProgress, progress_bar


def test_not_a_terminal_gives_few_plain_lines():
    out = io.StringIO()
    bar = progress_bar(100_000, "convert", unit="img", file=out, every=0.05)
    assert isinstance(bar, LineProgress)
    for _ in range(100_000):
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and text.count("\n") <= 50
    assert text.splitlines()[-1].startswith("convert: 100000/100000 img (100 %)")


def test_disabled_and_iterable_forms():
    out = io.StringIO()
    assert list(progress_bar(desc="x", iterable=range(5), file=out, enabled=False)) == list(range(5))
    assert out.getvalue() == ""
    assert list(progress_bar(desc="x", iterable=range(5), file=out)) == list(range(5))
    assert out.getvalue().count("\n") == 1 and "5/5" in out.getvalue()


def test_convert_into_a_log_file_writes_lines_not_frames(tmp_path):
    """`rela-fast convert` with stderr redirected to a file (CI, nohup): no carriage returns."""
    arr = np.random.default_rng(0).integers(0, 256, (300, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    code = ("import sys, numpy as np, rela_fast; from rela_fast.train import ConvNet; "
            "rela_fast.convert(np.load(sys.argv[1]), sys.argv[2], ConvNet(4), size=16, dim=4, batch_size=16, "
            "device='cpu')")
    with open(tmp_path / "log", "w") as log:
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"), str(tmp_path / "store")], stderr=log,
                       check=True, timeout=300)
    text = (tmp_path / "log").read_text()
    assert "\r" not in text and len(text.splitlines()) <= 5
