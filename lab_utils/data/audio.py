"""Spoken-word clips on Spark: robust WAV decoding, log-mel features and their TFRecord schema.

The seed talk's second data-prep case: a folder of short speech clips, one folder per word
(:mod:`lab_utils.data.speech` synthesizes one), read with Spark's ``binaryFile`` source,
turned into spectrograms by a pandas UDF and written as TFRecords for a speech classifier.

* :func:`~lab_utils.data.wav.decode_wav` parses the RIFF container itself, so every defect
  gets a precise reason: empty, not a WAV, truncated, unsupported encoding, no samples. PCM
  8/16/24/32-bit and float 32/64-bit, mono or multi-channel (downmixed), any sample rate
  (resampled).
* :func:`log_mel_spectrogram` is plain NumPy: a fixed clip length, Hann-windowed STFT, a mel
  filterbank, log. The same function runs in the Spark workers and in any later inference code.
* :func:`log_mel_udf` wraps them as a pandas UDF returning features *or* a per-row ``error``;
  one bad file never fails the job.

Nothing here imports TensorFlow or Spark at module level.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.data.wav import (
    MAX_SECONDS,
    SAMPLE_RATE,
    AudioError,
    decode_wav,
    resample,
    to_mono,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CLIP_SECONDS = 1.0
N_MELS = 40
N_FFT = 512
WIN = 400   # 25 ms at 16 kHz
HOP = 160   # 10 ms
FEATURES_DDL = ("features array<float>, frames int, source_rate int, channels int, "
                "seconds float, error string")


# --------------------------------------------------------------------------- features


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = 20.0, fmax: float | None = None) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` triangular filters on the HTK mel scale."""
    fmax = fmax or sample_rate / 2

    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


def fix_length(x: np.ndarray, length: int) -> np.ndarray:
    """Exactly ``length`` samples: the loudest stretch of a longer clip, a shorter one centred
    in silence."""
    if len(x) > length:
        energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        start = int(np.argmax(energy[length:] - energy[:-length]))
        return x[start:start + length]
    pad = length - len(x)
    return np.pad(x, (pad // 2, pad - pad // 2))


def log_mel_spectrogram(x: np.ndarray, sample_rate: int = SAMPLE_RATE, *,
                        clip_seconds: float = CLIP_SECONDS, n_mels: int = N_MELS,
                        n_fft: int = N_FFT, win: int = WIN, hop: int = HOP) -> np.ndarray:
    """``(frames, n_mels)`` float32 log-mel energies of a mono clip at ``sample_rate``.

    The clip is first cut or padded to ``clip_seconds`` so every example has the same shape:
    ``frames = 1 + (clip_samples - win) // hop`` (98 for the defaults).
    """
    x = fix_length(np.asarray(x, dtype=np.float32), int(round(clip_seconds * sample_rate)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(win).astype(np.float32), n=n_fft)) ** 2
    mel = spectrum @ mel_filterbank(sample_rate, n_fft, n_mels)
    return np.log(mel + 1e-6).astype(np.float32)


def clip_features(content: bytes | None, *, sample_rate: int = SAMPLE_RATE,
                  clip_seconds: float = CLIP_SECONDS, n_mels: int = N_MELS,
                  max_seconds: float = MAX_SECONDS) -> dict[str, Any]:
    """Decode one file, downmix, resample to ``sample_rate`` and compute its log-mel features.

    Returns ``features`` (flat float32, ``frames * n_mels``), ``frames``, ``source_rate``,
    ``channels`` and ``seconds`` (of the source). Raises :class:`AudioError`, also for a file
    longer than ``max_seconds`` or at a sample rate real audio does not use (see
    :mod:`lab_utils.data.wav`): those would allocate gigabytes for a few kilobytes of file.

    Examples
    --------
    Half a second of a 440 Hz tone in stereo at 44.1 kHz: one second of 16 kHz features.

    >>> from lab_utils.data.wav import encode_wav
    >>> tone = np.sin(2 * np.pi * 440 * np.arange(22_050) / 44_100)
    >>> out = clip_features(encode_wav(np.stack([tone, tone], axis=1), 44_100))
    >>> out["frames"], out["features"].shape, out["source_rate"], out["channels"], out["seconds"]
    (98, (3920,), 44100, 2, 0.5)
    >>> clip_features(b"ID3 and then some mp3 frames")
    Traceback (most recent call last):
    lab_utils.data.wav.AudioError: not a WAV file: it is MP3 data...
    """
    samples, rate = decode_wav(content, max_seconds=max_seconds)
    mono = resample(to_mono(samples), rate, sample_rate)
    mel = log_mel_spectrogram(mono, sample_rate, clip_seconds=clip_seconds, n_mels=n_mels)
    return {"features": mel.ravel(), "frames": mel.shape[0], "source_rate": rate,
            "channels": samples.shape[1], "seconds": len(samples) / rate}


def features_frame(contents: Iterable[bytes | None], **options: Any) -> pd.DataFrame:
    """:func:`clip_features` for many files: one row each, ``error`` set instead of raising."""
    columns = ["features", "frames", "source_rate", "channels", "seconds", "error"]
    failed = dict.fromkeys(columns)  # None, not NaN: Spark reads None as null in every type
    rows = []
    for content in contents:
        try:
            rows.append({**clip_features(content, **options), "error": None})
        except AudioError as exc:
            rows.append({**failed, "error": str(exc)})
        except Exception as exc:  # anything else is still one row's problem, named
            rows.append({**failed, "error": f"{type(exc).__name__}: {exc}"})
    return pd.DataFrame(rows, columns=columns, dtype=object)


def log_mel_udf(**options: Any):
    """A pandas UDF ``f(content) -> struct<features, frames, source_rate, channels, seconds,
    error>`` (``FEATURES_DDL``); ``options`` go to :func:`clip_features`.

    Examples
    --------
    Six usable clips in unusual formats and six broken files (:func:`write_bad_audio_corpus`):
    every usable clip gives 98 frames, every broken file its row's error.

    >>> from lab_utils.data.speech import write_bad_audio_corpus
    >>> _ = write_bad_audio_corpus(tmp / "clips")
    >>> clips = read_audio(spark, tmp / "clips")
    >>> mel = clips.select("path", log_mel_udf()("content").alias("f")).select("path", "f.*")
    >>> mel.where("error IS NULL").groupBy("frames").count().collect()
    [Row(frames=98, count=6)]
    >>> mel.where("path LIKE '%adpcm.wav'").select("error").first()[0]
    'unsupported WAV encoding (format tag 2)...'
    """
    from pyspark.sql.functions import pandas_udf

    # PySpark's stubs have no overload for the type-hint form (SPARK-39142), which the docs
    # recommend over functionType: the decorated function is untyped (Any) to mypy.
    @pandas_udf(FEATURES_DDL)  # type: ignore[call-overload]
    def log_mel(contents: pd.Series) -> pd.DataFrame:
        return features_frame(contents, **options)

    return log_mel


# --------------------------------------------------------------------------- files on Spark


def read_audio(spark: SparkSession, folder: Path | str, *, glob: str = "*.wav",
               partitions: int | None = None) -> DataFrame:
    """Files matching ``glob`` under ``folder`` as ``path``, ``label`` (parent folder), ``content``.

    ``binaryFile`` with ``pathGlobFilter`` and ``recursiveFileLookup``. Spark's file sources skip
    zero-byte files; they are added back so they are reported as errors instead of vanishing.
    Files the glob leaves out are listed by :func:`files_not_matching`.

    Examples
    --------
    The twelve ``.wav`` files of :func:`write_bad_audio_corpus`, the empty one included; its
    ``notes.txt`` is not read:

    >>> from lab_utils.data.speech import write_bad_audio_corpus
    >>> _ = write_bad_audio_corpus(tmp / "clips")
    >>> clips = read_audio(spark, tmp / "clips")
    >>> clips.columns, clips.count(), clips.where("length(content) = 0").count()
    (['path', 'label', 'content'], 12, 1)
    """
    from lab_utils.common.files import read_binary_files

    return read_binary_files(spark, folder, glob=glob, partitions=partitions)


def files_not_matching(folder: Path | str, glob: str = "*.wav") -> list[str]:
    """Visible files under ``folder`` that :func:`read_audio`'s ``glob`` does not read.

    Examples
    --------
    >>> _ = (tmp / "yes").mkdir()
    >>> for name in ("a.wav", "b.WAV", "notes.txt", ".hidden"):
    ...     _ = (tmp / "yes" / name).write_bytes(b"")
    >>> files_not_matching(tmp)
    ['.../yes/b.WAV', '.../yes/notes.txt']
    """
    from fnmatch import fnmatch

    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file()
                  and not p.name.startswith((".", "_")) and not fnmatch(p.name, glob))


def tfrecord_schema(words: Sequence[str], frames: int, n_mels: int = N_MELS):
    """The TFRecord schema of the clips (``lab_utils.data.tfrecords``).

    Examples
    --------
    >>> schema = tfrecord_schema(["yes", "no"], frames=98)
    >>> schema.names, schema["mel"].shape, schema.metadata["classes"]
    (['path', 'word', 'label', 'mel', 'source_rate'], (98, 40), ['yes', 'no'])
    """
    from lab_utils.data.tfrecords import Feature, TFRecordSchema

    return TFRecordSchema((
        Feature("path", "string"),
        Feature("word", "string"),
        Feature("label", "int64", (), "index of word in metadata.classes"),
        Feature("mel", "float32", (frames, n_mels), "log-mel energies, 10 ms frames"),
        Feature("source_rate", "int64", (), "sample rate of the file before resampling"),
    ), metadata={"classes": list(words), "sample_rate": SAMPLE_RATE, "n_mels": n_mels,
                 "clip_seconds": CLIP_SECONDS, "hop": HOP, "win": WIN, "n_fft": N_FFT})


def plot_spectrograms(rows: pd.DataFrame, frames: int, n_mels: int = N_MELS, ncols: int = 4):
    """Spectrograms of clips (``features`` flat, ``label``, ``path``) next to their labels.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from lab_utils.data.wav import encode_wav
    >>> tone = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    >>> rows = pd.DataFrame({"features": [clip_features(encode_wav(tone, 16_000))["features"]],
    ...                      "label": ["a4"], "path": ["tones/a4.wav"]})
    >>> fig = plot_spectrograms(rows, frames=98)
    >>> len(fig.axes), fig.axes[0].get_title()
    (4, "'a4'  a4")
    >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt

    n = len(rows)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows.itertuples(), strict=False):
        mel = np.asarray(row.features, dtype=np.float32).reshape(frames, n_mels)
        ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"'{row.label}'  {Path(str(row.path)).stem[:28]}", fontsize=8)
        ax.set_xlabel("frame (10 ms)", fontsize=7)
        ax.set_ylabel("mel band", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig

