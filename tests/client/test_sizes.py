"""Sizes: one parser (`pkgloader_client.parse_size`) and one meaning for the CLI and the service."""

from __future__ import annotations

import pytest
from pkgloader.settings import Settings
from pkgloader_client import _cli, parse_size

MEANINGS = [
    ("1048576", 1048576),
    ("0", 0),
    ("2k", 2 * 10**3),
    ("512M", 512 * 10**6),
    ("20G", 20 * 10**9),
    ("2GB", 2 * 10**9),
    ("1T", 10**12),
    ("64Ki", 64 * 2**10),
    ("64KiB", 64 * 2**10),
    ("512Mi", 512 * 2**20),
    ("16Gi", 16 * 2**30),
    ("2gib", 2 * 2**30),
    ("1Ti", 2**40),
    (" 3 Gi ", 3 * 2**30),
]


@pytest.mark.parametrize(("text", "expected"), MEANINGS)
def test_si_suffixes_are_decimal_and_iec_suffixes_binary(text: str, expected: int) -> None:
    """`G` is 10⁹ and `Gi` 2³⁰, with or without a trailing B, in any case."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), MEANINGS)
def test_the_cli_and_the_service_read_a_size_alike(text: str, expected: int) -> None:
    """`retain --max-total-bytes` and a PKGLOADER_* size setting give the same bytes for the
    same text (the CLI used to read `G` as 2³⁰ where the service read 10⁹)."""
    args = _cli.parser().parse_args(["retain", "--max-total-bytes", text])
    settings = Settings.load({"PKGLOADER_MAX_REQUEST_BYTES": text})
    assert args.max_total_bytes == settings.max_request_bytes == expected


@pytest.mark.parametrize("text", ["", "G", "-1", "1.5G", "12X", "1 0", "0x10", "1iB", "1Gb2"])
def test_anything_else_is_refused_on_both_sides(text: str, capsys: pytest.CaptureFixture) -> None:
    """A malformed size is a usage error in the CLI and a configuration error in the service."""
    with pytest.raises(ValueError, match="expected a byte count"):
        parse_size(text)
    with pytest.raises(SystemExit) as caught:
        _cli.parser().parse_args(["retain", "--max-total-bytes", text])
    assert caught.value.code == 2
    assert "expected a byte count" in capsys.readouterr().err
    with pytest.raises(ValueError, match="PKGLOADER_MAX_REQUEST_BYTES"):
        Settings.load({"PKGLOADER_MAX_REQUEST_BYTES": text})
