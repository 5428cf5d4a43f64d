"""A synthetic speech-commands set, written by the lab: the clips notebook 07 prepares.

:func:`build_speech_dataset` writes the clips with **espeak-ng** (a system package: the images
and ``.ci/run`` install it; :func:`require_espeak` says how when it is missing): a handful of
command words, several voices, speeds and pitches, and noisy copies (noise at a random SNR, a
time shift and a gain change) that multiply the set. Deterministic: espeak-ng writes the same
bytes for the same arguments, and the noise is seeded. :func:`write_bad_audio_corpus` writes
the damaged and unusual files the pipeline must survive; :func:`holdout` keeps every noisy copy
of a clip on the same side of the train/test split.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab_utils.common import split
from lab_utils.common.atomic import atomic_write
from lab_utils.data.wav import decode_wav, encode_wav, resample, to_mono
from lab_utils.errors import LabError

WORDS = ("yes", "no", "up", "down", "left", "right")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f3", "en-gb+m4")
SPEEDS = (130, 160, 190)
PITCHES = (35, 50, 70)
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


@dataclass(frozen=True)
class SpeechSummary:
    root: Path
    words: list[str]
    files: int
    per_word: dict[str, int]
    removed: int = 0  # clips of an earlier build that this one's settings do not name


#: The names :func:`build_speech_dataset` gives its clips:
#: ``<word>_<voice>_s<speed>_p<pitch>_n<k>.wav``.
CLIP_NAME = re.compile(r"[^/_]+_[^/]+_s\d+_p\d+_n\d+\.wav")


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
    (1 + noisy_copies)`` files; existing files of the same names are overwritten. Clips of an
    earlier build (named as this function names them) that these settings do not name are
    removed, so ``dest`` holds exactly this build's clips: a smaller setting (fewer voices, no
    noisy copies) is not silently mixed with the last run's. Any other file is left alone.

    Examples
    --------
    Two words in one voice, each with one noisy copy:

    >>> summary = build_speech_dataset(tmp, words=("yes", "no"), voices=("en-us",),
    ...                                speeds=(160,), pitches=(50,))
    >>> summary.files, summary.per_word
    (4, {'yes': 2, 'no': 2})
    >>> sorted(p.name for p in (tmp / "yes").iterdir())
    ['yes_en-us_s160_p50_n0.wav', 'yes_en-us_s160_p50_n1.wav']

    Built again without noisy copies, the folder holds the new set only:

    >>> again = build_speech_dataset(tmp, words=("yes", "no"), voices=("en-us",),
    ...                              speeds=(160,), pitches=(50,), noisy_copies=0)
    >>> again.files, again.removed, sorted(p.name for p in (tmp / "yes").iterdir())
    (2, 2, ['yes_en-us_s160_p50_n0.wav'])
    """
    require_espeak()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    written: set[Path] = set()
    for word in words:
        folder = dest / word
        folder.mkdir(parents=True, exist_ok=True)
        for voice in voices:
            for speed in speeds:
                for pitch in pitches:
                    base = folder / f"{word}_{voice}_s{speed}_p{pitch}"
                    paths = [Path(f"{base}_n{k}.wav") for k in range(noisy_copies + 1)]
                    samples, rate = decode_wav(synthesize(word, voice, speed, pitch, paths[0]))
                    for path in paths[1:]:
                        noisy = augment(to_mono(samples), rate, rng)
                        path.write_bytes(encode_wav(noisy, rate))
                    written.update(paths)
                    counts[word] = counts.get(word, 0) + 1 + noisy_copies
    stale = [p for p in dest.glob("*/*.wav") if CLIP_NAME.fullmatch(p.name) and p not in written]
    for path in stale:
        path.unlink()
    summary = SpeechSummary(dest, list(words), sum(counts.values()), counts, len(stale))
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

    >>> from lab_utils.data.audio import features_frame
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
