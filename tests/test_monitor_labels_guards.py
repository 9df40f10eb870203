"""The labels file's bounds, called directly (no model, no request log): its size at the bound
(a sparse file, no 256 MiB written) and the cut of a reader's error in the message. The rest of
the labels' checks are in test_monitor_stage.py."""

from __future__ import annotations

import pytest

from mlops_kit import monitor
from mlops_kit.errors import DataError

pytestmark = pytest.mark.security


def refusal(path) -> str:
    with pytest.raises(DataError) as caught:
        monitor.read_labels(path, "label")
    return str(caught.value)


def test_a_labels_file_over_256_mib_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "labels.parquet"
    with open(path, "wb") as sparse:
        sparse.truncate(256 * 2 ** 20 + 1)
    assert refusal(path).startswith("The labels file must be at most 268435456 bytes. Got 268435457 bytes instead.")
    with open(path, "wb") as sparse:  # at the bound: read (and refused as no parquet table)
        sparse.truncate(256 * 2 ** 20)
    assert refusal(path).startswith(f"The labels file {str(path)!r} must be a readable parquet table.")


def test_a_readers_error_is_cut_at_200_characters(tmp_path):
    path = tmp_path / ("n" * 150 + ".parquet")  # the reader's message names the file
    path.write_bytes(b"no parquet table")
    reason = refusal(path).split(" Got an error instead: ", 1)[1]
    assert len(reason) == 200 and reason.startswith("Could not open Parquet input source")
