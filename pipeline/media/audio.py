"""Audio decoding (PyAV) to float32 in [-1, 1], every channel kept, and writing 16-bit WAV.

What torchaudio.load returns through FFmpeg: integer PCM mapped as swresample does, planar and
packed layouts, damaged packets skipped. Every encoder's audio comes from here.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

from mvbind.errors import MediaError, NoStreamError, reason

_MAX_DEMUX_FAILURES = 32  # give up after this many demuxer errors in a row

# Integer sample formats → (offset, scale) mapping them to [-1, 1) as FFmpeg's swresample does.
_INT_SCALE = {
    np.dtype(np.uint8): (128.0, 1.0 / 128),
    np.dtype(np.int16): (0.0, 1.0 / 32768),
    np.dtype(np.int32): (0.0, 1.0 / 2147483648),
}


def decode_audio(path: str | os.PathLike[str]) -> tuple[Tensor, int]:
    """All channels of the best audio stream at its native rate: ((C, N) float32, sample rate).

    Like torchaudio.load / TorchCodec: float32 in [-1, 1], integer formats scaled by 2^(bits-1).
    Corrupt packets are skipped and a truncated file gives what could be decoded.
    Raises NoStreamError("no audio stream") or MediaError with a one-line reason.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise MediaError("file is empty (0 bytes)")
    except OSError as err:
        raise MediaError(f"cannot read file: {reason(err)}") from err
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise MediaError(f"cannot open media: {reason(err)}") from err
    with container:
        stream = container.streams.best("audio")
        if stream is None:
            raise NoStreamError("no audio stream")
        chunks, rate, error = _decode_stream(container, stream)
    if not chunks:
        if error is not None:
            raise MediaError(f"audio not decodable: {reason(error)}")
        raise MediaError("audio stream is empty")
    waveform = np.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0]
    if waveform.shape[1] == 0:
        raise MediaError("audio stream is empty")
    return torch.from_numpy(np.ascontiguousarray(waveform)), rate


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream
) -> tuple[list[np.ndarray], int, Exception | None]:
    """Decode `stream` to float32 (C, n) chunks; returns (chunks, rate, last error or None)."""
    chunks: list[np.ndarray] = []
    rate = channels = 0
    error: Exception | None = None
    converter = None
    failures = 0  # consecutive demuxer errors without a packet in between
    while True:
        try:
            for packet in container.demux(stream):
                failures = 0
                try:
                    frames = packet.decode()
                except av.FFmpegError as err:  # a corrupt packet: skip it, as ffmpeg does
                    error = err
                    continue
                for frame in frames:
                    if not rate:
                        rate, channels = frame.sample_rate, frame.layout.nb_channels
                    if frame.sample_rate != rate or frame.layout.nb_channels != channels:
                        raise MediaError(
                            f"audio format changes mid-stream ({rate} Hz {channels} ch → "
                            f"{frame.sample_rate} Hz {frame.layout.nb_channels} ch)"
                        )
                    array, converter = _frame_to_float32(frame, converter)
                    chunks.append(array)
            return chunks, rate, error
        except av.EOFError as err:  # truncated: keep what was decoded
            return chunks, rate, error or err
        except av.FFmpegError as err:  # a damaged packet in the container: read on, as ffmpeg does
            error = err
            failures += 1
            if failures >= _MAX_DEMUX_FAILURES:
                return chunks, rate, error


def _frame_to_float32(
    frame: av.AudioFrame, converter: av.AudioResampler | None
) -> tuple[np.ndarray, av.AudioResampler | None]:
    """(C, n) float32 samples of one frame; `converter` handles formats numpy can't read."""
    channels = frame.layout.nb_channels
    try:
        array = frame.to_ndarray()
    except ValueError:  # e.g. s64: let swresample convert to planar float (no rate change)
        if converter is None:
            converter = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
        out = [f.to_ndarray() for f in converter.resample(frame)]
        array = np.concatenate(out, axis=1) if out else np.zeros((channels, 0), np.float32)
        return array.astype(np.float32, copy=False), converter
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T  # interleaved → (C, n)
    if array.dtype in _INT_SCALE:
        offset, scale = _INT_SCALE[array.dtype]
        array = array.astype(np.float32)
        if offset:
            array -= offset
        array *= scale
    else:
        array = array.astype(np.float32, copy=False)
    return array, converter


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> Path:
    """Mono 16-bit PCM WAV: int16 samples as they are, float samples in [-1, 1] rounded to 16 bits
    (clipped). Written to a temporary name and renamed, so a WAV is whole or absent."""
    x = np.asarray(samples)
    pcm = x.astype("<i2") if x.dtype == np.int16 else np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    os.replace(tmp, path)
    return path
