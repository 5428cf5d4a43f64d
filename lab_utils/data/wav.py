"""WAV files in and out, without an audio library: 8/16/24/32-bit PCM and 32/64-bit float,
mono or multi-channel, mixed to mono and resampled to the lab's 16 kHz. A file that cannot be
decoded raises :class:`AudioError` naming what is wrong, which the Spark side turns into that
row's error.

A header is bounded before anything is allocated from it: a few kilobytes can declare a sample
rate of 100 MHz (resampling to 16 kHz would then need a 15 GiB filter) or 1 Hz (a 100 KB file
becomes 14 hours, 3 GiB at 16 kHz). Rates outside :data:`MIN_SAMPLE_RATE`..
:data:`MAX_SAMPLE_RATE` and clips longer than :data:`MAX_SECONDS` are that file's error."""

from __future__ import annotations

import struct

import numpy as np

from lab_utils.errors import LabError

#: The rate every clip is resampled to (the speech classifier's input).
SAMPLE_RATE = 16_000
#: Sample rates real audio uses: 1 kHz (telephony is 8 kHz) to 384 kHz (studio converters).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
#: Longest clip decoded, in seconds (10 minutes: at 384 kHz one float32 channel is ~880 MiB,
#: resampled to 16 kHz ~37 MiB). Longer recordings: cut them first, e.g. with
#: ``ffmpeg -i in.wav -f segment -segment_time 60 out%03d.wav``.
MAX_SECONDS = 600.0


class AudioError(LabError, ValueError):
    """One file cannot be used as a clip; the message says why."""


def encode_wav(samples: np.ndarray, sample_rate: int, *, sample_format: str = "int16") -> bytes:
    """A WAV file's bytes: ``samples`` float in [-1, 1], shape ``(n,)`` or ``(n, channels)``.

    ``sample_format``: ``uint8``, ``int16``, ``int32`` or ``float32``.
    """
    x = np.asarray(samples, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    x = np.clip(x, -1.0, 1.0)
    if sample_format == "float32":
        data, tag, bits = x.astype("<f4").tobytes(), 3, 32
    elif sample_format == "uint8":
        data, tag, bits = np.round(x * 127 + 128).astype(np.uint8).tobytes(), 1, 8
    elif sample_format in {"int16", "int32"}:
        bits = 16 if sample_format == "int16" else 32
        scale = 2 ** (bits - 1) - 1
        data, tag = np.round(x * scale).astype(f"<i{bits // 8}").tobytes(), 1
    else:
        raise AudioError(f"sample_format {sample_format!r}: use uint8, int16, int32 or float32")
    channels = x.shape[1]
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, sample_rate, sample_rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def check_sample_rate(rate: int) -> int:
    """``rate``, or :class:`AudioError` if real audio never uses it (a corrupt header)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}"
                         " Hz (MIN_SAMPLE_RATE..MAX_SAMPLE_RATE): a corrupt header, or audio to "
                         "convert first, e.g. `ffmpeg -i in.wav -ar 16000 out.wav`")
    return rate


def decode_wav(data: bytes | None, *, max_seconds: float = MAX_SECONDS
               ) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)`` of a WAV file: float32 in [-1, 1], shape ``(n, channels)``.

    Raises
    ------
    AudioError
        Empty, not a RIFF/WAVE file, truncated (a chunk or the samples shorter than the header
        says), an encoding other than PCM/float (e.g. ADPCM, mu-law), no samples at all, a
        sample rate outside :data:`MIN_SAMPLE_RATE`..:data:`MAX_SAMPLE_RATE`, or longer than
        ``max_seconds``.
    """
    if data is None or len(data) == 0:
        raise AudioError("empty file (0 bytes)")
    data = bytes(data)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        if data[:3] == b"ID3" or data[:2] in {b"\xff\xfb", b"\xff\xf3"}:
            raise AudioError("not a WAV file: it is MP3 data; convert it, e.g. "
                             "`ffmpeg -i in.mp3 out.wav`")
        raise AudioError(f"not a WAV file (no RIFF/WAVE header; starts with {data[:12]!r})")
    fmt, samples, truncated, pos = None, None, False, 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if len(body) < size:
            truncated = True
        if chunk == b"fmt ":
            if len(body) < 16:
                raise AudioError("truncated WAV: the fmt chunk is incomplete")
            fmt = struct.unpack("<HHIIHH", body[:16]) + (body,)
        elif chunk == b"data":
            samples = body
            if truncated:
                break
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None:
        raise AudioError("truncated WAV: no fmt chunk" if truncated or samples is None
                         else "not a valid WAV file: no fmt chunk")
    if samples is None:
        raise AudioError("truncated WAV: no data chunk (the file ends after the header)")
    tag, channels, rate, _, block, bits, raw = fmt
    if tag == _EXTENSIBLE and len(raw) >= 26:
        tag = struct.unpack("<H", raw[24:26])[0]  # the sub-format GUID starts with the real tag
    if tag not in {_PCM, _FLOAT}:
        raise AudioError(f"unsupported WAV encoding (format tag {tag}): only PCM and float are "
                         "read; convert it, e.g. `ffmpeg -i in.wav -c:a pcm_s16le out.wav`")
    if channels < 1 or rate < 1 or bits not in {8, 16, 24, 32, 64} or block != channels * bits // 8:
        raise AudioError(f"corrupt WAV header: {channels} channels, {rate} Hz, {bits} bits")
    check_sample_rate(rate)
    if truncated:
        raise AudioError(f"truncated WAV: the header declares {size} bytes of audio, the file "
                         f"holds {len(samples)}")
    n = len(samples) // block
    if n == 0:
        raise AudioError("WAV file without samples (0 frames)")
    if n > max_seconds * rate:
        raise AudioError(f"WAV file too long: {n} frames at {rate} Hz is {n / rate:g} s long, "
                         f"more than max_seconds={max_seconds:g}; cut it into shorter clips "
                         "first, e.g. `ffmpeg -i in.wav -f segment -segment_time 60 "
                         "out%03d.wav`")
    raw = samples[:n * block]
    if tag == _FLOAT:
        if bits not in {32, 64}:
            raise AudioError(f"corrupt WAV header: float samples of {bits} bits")
        x = np.frombuffer(raw, dtype=f"<f{bits // 8}").astype(np.float32)
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    elif bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 2**23, v - 2**24, v) / 2**23).astype(np.float32)
    else:
        x = (np.frombuffer(raw, dtype=f"<i{bits // 8}") / float(2 ** (bits - 1))).astype(
            np.float32)
    return x.reshape(n, channels), rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``(n, channels)`` to ``(n,)`` by averaging the channels."""
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample(x: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited polyphase resampling (scipy ``resample_poly``) from ``rate_in`` to
    ``rate_out``.

    Both rates must be in :data:`MIN_SAMPLE_RATE`..:data:`MAX_SAMPLE_RATE`: the filter has about
    ``20 * max(rate_in, rate_out) / gcd(rate_in, rate_out)`` taps, 15 GiB for 100 MHz.
    """
    check_sample_rate(rate_in)
    check_sample_rate(rate_out)
    if rate_in == rate_out:
        return x.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)
