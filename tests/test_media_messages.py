"""Damaged files are never accepted silently, and the length messages say the right thing (issue 11, item 18)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from media_fixtures import make_video

from instructav2av.media import ClipSpec, MediaError, load_clip, read_clip
from instructav2av.models.configs import get_preset

SPEC = ClipSpec.from_config(get_preset("demo"))  # 17 frames at 16 fps


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("messages")


def test_a_truncated_file_is_reported_when_only_a_window_is_read(folder, caplog):
    whole = make_video(folder / "long.mp4", fps=24, seconds=8, faststart=True)
    cut = folder / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # plays, then stops near 3.5 s
    with caplog.at_level(logging.WARNING):
        clip = read_clip(cut, duration=2.0)  # the window itself decodes
    assert clip.num_frames == 48
    assert "probably truncated or damaged" in caplog.text and "declares 8.00 s" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_clip(whole, duration=2.0)  # an intact file: not a word
    assert caplog.text == ""


def test_damaged_frames_in_the_window_are_never_silent(folder, caplog):
    good = make_video(folder / "video_only.mp4", fps=24, seconds=4, faststart=True, audio=False)
    data = bytearray(good.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 400, 101):
        data[i] ^= 0x55
    bad = folder / "flipped.mp4"
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        try:
            read_clip(bad, duration=3.5)
        except MediaError as exc:  # refused outright: not silent either
            assert "damaged" in str(exc)
            return
    assert "decoded with errors" in caplog.text


def test_a_one_frame_video_is_called_too_short_not_a_bad_start(folder):
    one = make_video(folder / "one.mp4", fps=30, seconds=1 / 30)
    with pytest.raises(MediaError) as caught:
        load_clip(one, SPEC)
    message = str(caught.value)
    assert "start=" not in message and "only 0.033 s long (1 frame at 30 fps)" in message


def test_padding_warning_gives_the_file_time_of_start(folder, caplog):
    four = make_video(folder / "four.mp4", fps=24, seconds=4)
    with caplog.at_level(logging.WARNING):
        out = load_clip(four, SPEC, start=3.05)
    assert out.valid_frames == 15
    assert "from 3.04 s" in caplog.text and "from 0.00 s" not in caplog.text  # the frame shown at 3.05 s
    with pytest.raises(MediaError, match="beyond the end"):
        load_clip(four, SPEC, start=3.99)
