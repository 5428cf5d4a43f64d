"""WAV decoding, resampling, log-mel features and the espeak-ng data set, without Spark."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lab_utils.data import audio, speech, wav


def tone(freq: float, rate: int, seconds: float = 0.5, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_espeak_ng_is_installed():
    # Notebook 07 needs it; a missing espeak-ng must fail loudly here, not be skipped.
    assert speech.espeak_path(), f"espeak-ng not found: {speech.ESPEAK_INSTALL_HINT}"


def test_missing_espeak_names_the_install_command(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda _: None)
    with pytest.raises(speech.EspeakMissingError, match="apt-get install espeak-ng"):
        speech.require_espeak()


@pytest.mark.parametrize("fmt, tolerance", [("int16", 1e-4), ("int32", 1e-8), ("uint8", 1e-2),
                                            ("float32", 0)])
def test_wav_round_trip(fmt, tolerance):
    x = np.stack([tone(440, 8000), tone(660, 8000, amp=0.25)], axis=1)
    samples, rate = wav.decode_wav(wav.encode_wav(x, 8000, sample_format=fmt))
    assert rate == 8000 and samples.shape == x.shape and samples.dtype == np.float32
    np.testing.assert_allclose(samples, x, atol=tolerance)


def test_stereo_is_downmixed_by_averaging():
    x = np.stack([tone(440, 8000), np.zeros(4000, np.float32)], axis=1)
    np.testing.assert_allclose(wav.to_mono(x), x[:, 0] / 2)


def test_resampling_keeps_the_pitch():
    y = wav.resample(tone(1000, 44_100, seconds=1.0), 44_100, 16_000)
    assert len(y) == 16_000
    peak = np.argmax(np.abs(np.fft.rfft(y))) * 16_000 / len(y)
    assert peak == pytest.approx(1000, abs=2)


def test_log_mel_shape_and_silence():
    mel = audio.log_mel_spectrogram(tone(500, 16_000))
    assert mel.shape == (98, audio.N_MELS) and mel.dtype == np.float32
    # 500 Hz lands in a low band; the top bands stay near the floor.
    assert mel.mean(axis=0).argmax() < 10
    silent = audio.log_mel_spectrogram(np.zeros(16_000, np.float32))
    assert np.isfinite(silent).all() and silent.max() == pytest.approx(np.log(1e-6))


def test_fix_length_keeps_the_loudest_second():
    x = np.zeros(48_000, np.float32)
    x[30_000:34_000] = 1.0
    y = audio.fix_length(x, 16_000)
    assert len(y) == 16_000 and y.sum() == 4000
    short = audio.fix_length(np.ones(1000, np.float32), 16_000)
    assert len(short) == 16_000 and short[7500:8500].sum() == 1000  # centred


def test_mel_filterbank():
    fb = audio.mel_filterbank()
    assert fb.shape == (audio.N_FFT // 2 + 1, audio.N_MELS)
    assert (fb >= 0).all() and fb.max() <= 1.0 and (fb.sum(axis=0) > 0).all()


def test_bad_input_corpus_each_file_has_its_outcome(tmp_path):
    expected = speech.write_bad_audio_corpus(tmp_path)
    wav = sorted(p for p in tmp_path.iterdir() if p.suffix == ".wav")
    frame = audio.features_frame([p.read_bytes() for p in wav])
    assert len(frame) == len(wav) == len(expected) - 1
    for path, row in zip(wav, frame.itertuples(), strict=True):
        want = expected[path.name]
        if want is None:
            assert row.error is None, (path.name, row.error)
            assert len(row.features) == 98 * audio.N_MELS and np.isfinite(row.features).all()
        else:
            assert row.error and want in row.error, (path.name, row.error)
            assert row.features is None and row.source_rate is None
    rates = {p.name: r.source_rate for p, r in zip(wav, frame.itertuples(), strict=True)}
    assert rates["stereo_44100.wav"] == 44_100 and rates["uint8_11025.wav"] == 11_025
    assert [p.split("/")[-1] for p in audio.files_not_matching(tmp_path)] == ["notes.txt"]
    assert expected["notes.txt"] == "skipped"


def test_truncation_errors_say_how_much_is_missing():
    data = wav.encode_wav(tone(440, 8000), 8000)
    with pytest.raises(wav.AudioError, match="declares 8000 bytes of audio, the file holds 956"):
        wav.decode_wav(data[:1000])


def test_holdout_keeps_noisy_copies_with_their_clip():
    names = [f"{w}_en-us_s{s}_p{p}_n{k}.wav" for w in speech.WORDS for s in (140, 180)
             for p in (40, 70) for k in range(3)]
    groups: dict[str, set[bool]] = {}
    for name in names:
        groups.setdefault(speech.clip_group(name), set()).add(speech.holdout(name))
    assert all(len(sides) == 1 for sides in groups.values())
    assert speech.clip_group("up_en-us+f3_s140_p40_n12.wav") == "up_en-us+f3_s140_p40"
    assert 0 < sum(speech.holdout(n) for n in names) < len(names)


def test_speech_dataset_is_deterministic(tmp_path):
    kwargs = dict(words=["yes", "no"], voices=["en-us"], speeds=[160], pitches=[50],
                  noisy_copies=1)
    first = speech.build_speech_dataset(tmp_path / "a", **kwargs)
    speech.build_speech_dataset(tmp_path / "b", **kwargs)
    assert first.files == 4 and first.per_word == {"yes": 2, "no": 2}

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.wav"))}

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert sorted(digest(tmp_path / "a")) == ["no/no_en-us_s160_p50_n0.wav",
                                              "no/no_en-us_s160_p50_n1.wav",
                                              "yes/yes_en-us_s160_p50_n0.wav",
                                              "yes/yes_en-us_s160_p50_n1.wav"]
    clean, rate = wav.decode_wav((tmp_path / "a/yes/yes_en-us_s160_p50_n0.wav").read_bytes())
    noisy, _ = wav.decode_wav((tmp_path / "a/yes/yes_en-us_s160_p50_n1.wav").read_bytes())
    assert rate == 22_050 and 0.2 < len(clean) / rate < 1.5
    assert len(noisy) >= len(clean) and not np.array_equal(noisy[: len(clean)], clean)


def test_unknown_voice_fails_with_espeak_hint(tmp_path):
    with pytest.raises(RuntimeError, match="espeak-ng --voices"):
        speech.synthesize("yes", "xx-nonexistent", 160, 50, tmp_path / "x.wav")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- resource limits


@pytest.mark.parametrize("rate", [100_000_007, 1, 999, 384_001])
def test_a_sample_rate_real_audio_never_uses_is_refused(rate):
    # 100,000,007 Hz made resampling to 16 kHz allocate ~15 GiB for a 3 KB file.
    data = wav.encode_wav(np.zeros(1500), rate)
    with pytest.raises(wav.AudioError, match=rf"sample rate {rate} Hz is outside "
                                             r"1000\.\.384000 Hz"):
        wav.decode_wav(data)


def test_the_supported_sample_rate_range_still_decodes():
    for rate in (wav.MIN_SAMPLE_RATE, wav.MAX_SAMPLE_RATE):
        samples, got = wav.decode_wav(wav.encode_wav(np.zeros(1000), rate))
        assert got == rate and samples.shape == (1000, 1)


def test_a_clip_longer_than_the_limit_is_refused_naming_both():
    data = wav.encode_wav(np.zeros(3 * 1000 + 1), 1000)  # 3.001 s
    with pytest.raises(wav.AudioError,
                       match=r"3001 frames at 1000 Hz is 3\.001 s long, more than max_seconds=3;"):
        wav.decode_wav(data, max_seconds=3)
    assert wav.decode_wav(data, max_seconds=4)[0].shape == (3001, 1)
    assert wav.MAX_SECONDS * wav.MAX_SAMPLE_RATE * 4 < 2**30  # a float32 channel under 1 GiB


def test_oversized_headers_are_row_errors_not_allocations():
    # 1 Hz over 100 KB asked resampling for 3 GiB; both are one row's error now.
    frame = audio.features_frame([wav.encode_wav(np.zeros(50_000), 1),
                                  wav.encode_wav(np.zeros(1500), 100_000_007),
                                  wav.encode_wav(tone(440, 16_000), 16_000)])
    assert "sample rate 1 Hz" in frame["error"][0]
    assert "sample rate 100000007 Hz" in frame["error"][1]
    assert frame["error"][2] is None and frame["source_rate"][2] == 16_000


def test_resample_refuses_rates_outside_the_range():
    with pytest.raises(wav.AudioError, match="sample rate 100000007 Hz"):
        wav.resample(np.zeros(10, np.float32), 100_000_007)
