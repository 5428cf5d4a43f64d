"""Spoken-word clips: a synthetic speech-commands set, robust WAV decoding and log-mel features.

The seed talk's second data-prep case: a folder of short speech clips, one folder per word,
read with Spark's ``binaryFile`` source, turned into spectrograms by a pandas UDF and written as
TFRecords for a speech classifier.

* :func:`build_speech_dataset` writes the clips with **espeak-ng** (a system package: the images
  and ``.ci/run`` install it; :func:`require_espeak` says how when it is missing): a handful of
  command words, several voices, speeds and pitches, and noisy copies (noise at a random SNR,
  a time shift and a gain change) that multiply the set. Deterministic: espeak-ng writes the
  same bytes for the same arguments, and the noise is seeded.
* :func:`decode_wav` parses the RIFF container itself, so every defect gets a precise reason:
  empty, not a WAV, truncated, unsupported encoding, no samples. PCM 8/16/24/32-bit and float
  32/64-bit, mono or multi-channel (downmixed), any sample rate (resampled).
* :func:`log_mel_spectrogram` is plain NumPy: a fixed clip length, Hann-windowed STFT, a mel
  filterbank, log. The same function runs in the Spark workers and in any later inference code.
* :func:`log_mel_udf` wraps them as a pandas UDF returning features *or* a per-row ``error``;
  one bad file never fails the job.

Nothing here imports TensorFlow or Spark at module level.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # at module level: pandas UDF type hints are resolved from these globals

from lab_utils.common import split
from lab_utils.common.atomic import atomic_write
from lab_utils.data.wav import (
    MAX_SECONDS,
    SAMPLE_RATE,
    AudioError,
    decode_wav,
    encode_wav,
    resample,
    to_mono,
)
from lab_utils.errors import LabError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

WORDS = ("yes", "no", "up", "down", "left", "right")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f3", "en-gb+m4")
SPEEDS = (130, 160, 190)
PITCHES = (35, 50, 70)
CLIP_SECONDS = 1.0
N_MELS = 40
N_FFT = 512
WIN = 400   # 25 ms at 16 kHz
HOP = 160   # 10 ms
FEATURES_DDL = ("features array<float>, frames int, source_rate int, channels int, "
                "seconds float, error string")
ESPEAK_INSTALL_HINT = ("install it with `apt-get install espeak-ng` (Debian/Ubuntu), "
                       "`brew install espeak-ng` (macOS) or `dnf install espeak-ng` (Fedora)")


class EspeakMissingError(LabError, RuntimeError):
    """espeak-ng is not installed; the message says how to install it."""


class EspeakError(LabError, RuntimeError):
    """espeak-ng ran but wrote no audio (an unknown voice, most often); the message has its
    stderr."""


def espeak_path() -> str | None:
    return shutil.which("espeak-ng")


def require_espeak() -> str:
    """The espeak-ng executable, or :class:`EspeakMissingError` with the install command."""
    path = espeak_path()
    if path is None:
        raise EspeakMissingError(
            f"espeak-ng not found on PATH: the speech data set (notebook 07) is synthesized "
            f"with it; {ESPEAK_INSTALL_HINT}. The lab's images and .ci/run install it.")
    return path


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


# --------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class SpeechSummary:
    root: Path
    words: list[str]
    files: int
    per_word: dict[str, int]


def synthesize(word: str, voice: str, speed: int, pitch: int, path: Path) -> bytes:
    """``espeak-ng -w path -v voice -s speed -p pitch word`` (22,050 Hz, 16-bit mono WAV),
    written under a temporary name and renamed; returns the bytes."""
    exe = require_espeak()

    def speak(tmp: Path) -> None:
        result = subprocess.run([exe, "-w", str(tmp), "-v", voice, "-s", str(speed), "-p",
                                 str(pitch), word], capture_output=True, timeout=60)
        if result.returncode != 0 or not tmp.is_file() or tmp.stat().st_size <= 44:
            raise EspeakError(f"espeak-ng failed for {word!r} with voice {voice!r}: "
                              f"{result.stderr.decode(errors='replace').strip() or 'no audio'}"
                              " (list voices with `espeak-ng --voices=en`)")

    atomic_write(path, speak)
    return path.read_bytes()


def augment(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy copy: white noise at 5-25 dB SNR, up to 150 ms shift, gain 0.5-1.0."""
    shift = int(rng.integers(0, int(0.15 * rate)))
    x = np.concatenate([np.zeros(shift, dtype=np.float32), x])
    power = float(np.mean(x ** 2)) or 1e-8
    snr_db = rng.uniform(5.0, 25.0)
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), len(x))
    y = (x + noise) * rng.uniform(0.5, 1.0)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def clip_group(path: Path | str) -> str:
    """``yes_en-us_s130_p50_n2.wav`` -> ``yes_en-us_s130_p50``: a clip and its noisy copies."""
    return re.sub(r"_n\d+$", "", Path(str(path)).stem)


def holdout(path: Path | str, every: int = split.EVERY) -> bool:
    """Deterministic held-out split by source utterance: noisy copies stay with their original.

    The same as the Spark column :func:`holdout_column`.
    """
    return split.is_held_out(clip_group(path), every)


def holdout_column(every: int = split.EVERY):
    """Spark column: True for the clips :func:`holdout` holds out (``path`` column).

    Examples
    --------
    Spark holds out the clips Python does, a clip's noisy copies with it:

    >>> paths = [f"file:/data/yes/yes_v{v}_s130_p50_n{n}.wav" for v in range(20) for n in (0, 1)]
    >>> df = spark.createDataFrame([(p,) for p in paths], "path string")
    >>> held = [r.path for r in df.where(holdout_column()).collect()]
    >>> sorted(held) == sorted(p for p in paths if holdout(p)), len(held)  # 5 clips, 2 copies
    (True, 10)
    """
    from pyspark.sql import functions as F

    group = F.regexp_extract(F.col("path"), r"([^/]+?)(_n\d+)?\.[^./]+$", 1)
    return split.held_out_column(group, every)


def build_speech_dataset(
    dest: Path,
    *,
    words: Sequence[str] = WORDS,
    voices: Sequence[str] = VOICES,
    speeds: Sequence[int] = SPEEDS,
    pitches: Sequence[int] = PITCHES,
    noisy_copies: int = 1,
    seed: int = 0,
) -> SpeechSummary:
    """Write ``dest/<word>/<word>_<voice>_s<speed>_p<pitch>_n<k>.wav`` with espeak-ng.

    ``n0`` is espeak-ng's clip as it comes (22,050 Hz: the pipeline resamples), ``n1``... are
    noisy copies (:func:`augment`). ``len(words) * len(voices) * len(speeds) * len(pitches) *
    (1 + noisy_copies)`` files; existing files of the same names are overwritten.

    Examples
    --------
    Two words in one voice, each with one noisy copy:

    >>> summary = build_speech_dataset(tmp, words=("yes", "no"), voices=("en-us",),
    ...                                speeds=(160,), pitches=(50,))
    >>> summary.files, summary.per_word
    (4, {'yes': 2, 'no': 2})
    >>> sorted(p.name for p in (tmp / "yes").iterdir())
    ['yes_en-us_s160_p50_n0.wav', 'yes_en-us_s160_p50_n1.wav']
    """
    require_espeak()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for word in words:
        folder = dest / word
        folder.mkdir(parents=True, exist_ok=True)
        for voice in voices:
            for speed in speeds:
                for pitch in pitches:
                    base = folder / f"{word}_{voice}_s{speed}_p{pitch}"
                    clean = synthesize(word, voice, speed, pitch, Path(f"{base}_n0.wav"))
                    samples, rate = decode_wav(clean)
                    for k in range(1, noisy_copies + 1):
                        noisy = augment(to_mono(samples), rate, rng)
                        Path(f"{base}_n{k}.wav").write_bytes(encode_wav(noisy, rate))
                    counts[word] = counts.get(word, 0) + 1 + noisy_copies
    summary = SpeechSummary(dest, list(words), sum(counts.values()), counts)
    (dest / ".dataset.json").write_text(json.dumps(
        {"source": "espeak-ng", "words": list(words), "voices": list(voices),
         "speeds": list(speeds), "pitches": list(pitches), "noisy_copies": noisy_copies,
         "seed": seed, "files": summary.files, "per_word": counts}, indent=2))
    return summary


def write_bad_audio_corpus(dest: Path, seed: int = 7) -> dict[str, str | None]:
    """Files that break naive audio pipelines; return ``{file name: expected outcome}``.

    The outcome is ``None`` when the file must give features (a usable clip in an unusual
    format), ``"skipped"`` for a file the ``*.wav`` glob does not read, and otherwise a fragment
    of the per-row error it must produce.

    Examples
    --------
    What :func:`clip_features` makes of each ``.wav`` file is what the corpus says:

    >>> expected = write_bad_audio_corpus(tmp)
    >>> expected["stereo_44100.wav"], expected["mp3_renamed.wav"], expected["notes.txt"]
    (None, 'not a WAV file', 'skipped')
    >>> frame = features_frame((tmp / name).read_bytes() for name in expected)
    >>> all(error is None if fragment is None else fragment in error
    ...     for fragment, error in zip(expected.values(), frame["error"])
    ...     if fragment != "skipped")
    True
    """
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.6 * 44_100)) / 44_100
    tone = (0.4 * np.sin(2 * np.pi * 440 * t) * np.hanning(len(t))).astype(np.float32)
    good = encode_wav(resample(tone, 44_100, 22_050), 22_050)
    adpcm = bytearray(encode_wav(tone[:2000], 8000))
    adpcm[20:22] = struct.pack("<H", 2)  # format tag 2: Microsoft ADPCM
    files: dict[str, tuple[bytes, str | None]] = {
        "empty.wav": (b"", "empty file"),
        "truncated.wav": (good[: len(good) // 2], "truncated WAV"),
        "header_only.wav": (good[:44], "truncated WAV"),
        "mp3_renamed.wav": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(rng.integers(
            0, 256, 1000, dtype=np.uint8)), "not a WAV file"),
        "text.wav": (b"this is not audio\n", "not a WAV file"),
        "adpcm.wav": (bytes(adpcm), "unsupported WAV encoding"),
        "stereo_44100.wav": (encode_wav(np.stack([tone, -tone], axis=1), 44_100), None),
        "mono_8000.wav": (encode_wav(resample(tone, 44_100, 8_000), 8_000), None),
        "float32_48000.wav": (encode_wav(resample(tone, 44_100, 48_000), 48_000,
                                         sample_format="float32"), None),
        "uint8_11025.wav": (encode_wav(resample(tone, 44_100, 11_025), 11_025,
                                       sample_format="uint8"), None),
        "silence.wav": (encode_wav(np.zeros(16_000), 16_000), None),
        "long_3s.wav": (encode_wav(np.tile(tone, 5), 44_100), None),
        "notes.txt": (b"a stray text file in the audio folder\n", "skipped"),
    }
    for name, (data, _) in files.items():
        (dest / name).write_bytes(data)
    return {name: outcome for name, (_, outcome) in files.items()}


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

