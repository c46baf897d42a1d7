"""DALI pipelines for the decoders (imported only when a DALI decoder runs).

``decode_pipeline`` (CPU, ``device_id=None``): JPEG bytes -> (H, W, 3) uint8 per sample; the decoder resizes
with torch. ``observer_pipeline`` (any device, used for "mixed"): the whole observer transform in DALI.
The observer pipeline is fed from Python (``external_source``) with each batch's encoded JPEGs and, per sample, the
exact torchvision resize size and crop window computed from the header (see
:func:`rela_fast.data.images.observer_geometry`), so DALI and Pillow resize to the same size and crop the
same pixels. ``device_id=None`` gives a CPU-only pipeline (no GPU needed); "mixed" uses the GPU's JPEG
decoder. Execution is synchronous (``feed_input`` then ``run``): overlap comes from the decoder reading
and checking the next batch's files while this one runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def


def observer_pipeline(batch_size: int, size: int, num_threads: int, device: str = "cpu",
                      device_id: int | None = None) -> Any:
    """A built pipeline: encoded bytes + (new_w, new_h, left, top) per sample -> uint8 (3, S, S) per sample."""

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def observer() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        new_w = fn.external_source(name="new_w", dtype=types.FLOAT, ndim=0)
        new_h = fn.external_source(name="new_h", dtype=types.FLOAT, ndim=0)
        anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
        images = fn.decoders.image(encoded, device=device, output_type=types.RGB, jpeg_fancy_upsampling=True)
        images = fn.resize(images, resize_x=new_w, resize_y=new_h, interp_type=types.INTERP_LINEAR, antialias=True)
        images = fn.slice(images, anchor, np.array([size, size], dtype=np.int32), axis_names="WH",
                          normalized_anchor=False, normalized_shape=False)
        return fn.transpose(images, perm=[2, 0, 1])

    pipe = observer()
    pipe.build()
    return pipe


def decode_pipeline(batch_size: int, num_threads: int) -> Any:
    """A built CPU pipeline: encoded bytes -> decoded uint8 (H, W, 3) RGB per sample (EXIF orientation applied)."""

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def decode() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    return pipe


def run_decode(pipe: Any, data: list[bytes]) -> list[np.ndarray]:
    """Run one batch of :func:`decode_pipeline`: (H, W, 3) uint8 arrays, copied out of DALI's buffers."""
    pipe.feed_input("encoded", [np.frombuffer(b, dtype=np.uint8) for b in data])
    (out,) = pipe.run()
    return [np.array(out[i]) for i in range(len(out))]


def run_observer(pipe: Any, data: list[bytes], geometry: list[tuple[int, int, int, int]]) -> np.ndarray | torch.Tensor:
    """Run one batch: a uint8 (n, 3, S, S) numpy array (CPU pipeline) or CUDA tensor (mixed pipeline)."""
    pipe.feed_input("encoded", [np.frombuffer(b, dtype=np.uint8) for b in data])
    pipe.feed_input("new_w", [np.array(g[0], dtype=np.float32) for g in geometry])
    pipe.feed_input("new_h", [np.array(g[1], dtype=np.float32) for g in geometry])
    pipe.feed_input("anchor", [np.array([g[2], g[3]], dtype=np.int32) for g in geometry])
    (out,) = pipe.run()
    if hasattr(out, "as_cpu") and type(out).__name__.endswith("GPU"):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = out.as_tensor()
        result = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=torch.device("cuda", pipe.device_id))
        feed_ndarray(tensor, result, cuda_stream=torch.cuda.current_stream(result.device))
        return result
    return out.as_array()
