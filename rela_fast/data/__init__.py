"""Data layer: sources (where images are), robust decoding to RGB, and decoder backends producing batches.

``open_source(path_array_or_dataset)`` -> :class:`Source` (map-style torch / Hugging Face datasets become a
:class:`DatasetSource`); ``make_decoder(kind, size, device)`` -> :class:`Decoder`
whose ``iterate(src, indices, batch_size, on_error)`` yields :class:`DecodedBatch` (uint8 (n, 3, S, S)
images + their row indices + skipped rows with reasons); ``load_rgb(bytes_or_array)`` -> RGB Pillow image.
DALI is imported only when a DALI decoder runs; ``make_jpeg_folder`` lives in ``rela_fast.data.synthetic``
(needs scikit-image).
"""

from rela_fast.data.decode import DecodedBatch, Decoder, dali_available, make_decoder
from rela_fast.data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_observed, load_rgb, observer_geometry
from rela_fast.data.mapped import DatasetSource
from rela_fast.data.sources import Source, is_source, open_source

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetSource",
    "DecodedBatch",
    "Decoder",
    "ImageDecodeError",
    "Source",
    "dali_available",
    "decode_observed",
    "is_source",
    "load_rgb",
    "make_decoder",
    "observer_geometry",
    "open_source",
]
