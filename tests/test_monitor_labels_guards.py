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
    torn = tmp_path / "first\nsecond.parquet"  # a message of several lines: its first one
    torn.write_bytes(b"no parquet table")
    assert refusal(torn).split(" Got an error instead: ", 1)[1] == f"Could not open Parquet input source '{tmp_path}/first"


def test_a_duplicated_label_names_the_first_request_id_and_row_twice(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,label\nc,0,1\na,1,1\nb,0,1\na,1,0\nb,0,0\n")
    assert refusal(path).startswith(f"The labels file {str(path)!r} must name each request id (and row) once. "
                                    "Got 'a' row 1 ")


def test_labels_that_join_nothing_name_an_id_of_each_side():
    import pandas as pd

    live = pd.DataFrame({"request_id": ["x", "y"], "row": [0, 0], "prediction": [1, 0]})
    labels = pd.DataFrame({"request_id": ["a", "b"], "row": [2, 0], "label": [1, 0]})
    with pytest.raises(DataError) as caught:
        monitor.join_labels(live, labels, "label", source="labels.csv")
    assert str(caught.value).startswith("The labels of labels.csv must name requests of the log. Got 2 labels that "
                                        "join nothing instead (e.g. 'a' row 2; the log has ids such as 'x').")


def test_a_label_that_is_no_class_lists_the_first_ten_classes():
    import pandas as pd

    from mlops_kit.monitor._report import _class_codes

    classes = [f"c{i}" for i in range(12)]
    with pytest.raises(DataError) as caught:
        _class_codes(pd.Series(["c1", "z", "z"]), classes, "The labels", "labels.csv", "label")
    listed = ", ".join(repr(c) for c in classes[:10])
    assert str(caught.value).startswith(f"The labels must be classes of the model ({listed}). Got 'z' on 2 rows "
                                        "instead.")
    assert _class_codes(pd.Series(["c11", "c3", "c0"]), classes, "", "", "").tolist() == [11, 3, 0]


def test_the_labelled_rows_are_the_logs_rows_with_their_label():
    import pandas as pd

    live = pd.DataFrame({"request_id": ["x", "x", "y"], "row": [0, 1, 0], "prediction": [1, 0, 1],
                         "label": [9, 9, 9]}, index=[5, 6, 7])
    labels = pd.DataFrame({"request_id": ["y", "x", "q"], "row": [0, 1, 0], "label": [0, 1, 1]})
    labelled, unmatched = monitor.join_labels(live, labels, "label")
    assert unmatched == 1
    assert labelled.to_dict("list") == {"request_id": ["x", "y"], "row": [1, 0], "prediction": [0, 1], "label": [1, 0]}
    assert labelled.index.tolist() == [0, 1]


def test_a_labels_file_without_its_columns_names_the_first_missing_and_ten_it_has(tmp_path):
    path = tmp_path / "labels.csv"
    columns = [f"k{i}" for i in range(12)]
    path.write_text(",".join(columns) + "\n" + ",".join("1" * 12) + "\n")
    with pytest.raises(DataError) as caught:
        monitor.read_labels(path, "label")
    assert str(caught.value).startswith("The labels file must have the columns 'request_id' and 'label' (the target), "
                                        f"and may have 'row'. Got the columns {columns[:10]} instead.")
    assert caught.value.column == "request_id"
    path.write_text("request_id,k\n1,2\n")
    with pytest.raises(DataError) as caught:
        monitor.read_labels(path, "label")
    assert caught.value.column == "label"


def test_the_live_metrics_are_judged_from_thirty_labelled_rows():
    assert monitor.MIN_LABELLED_ROWS == 30  # the README's figure; test_monitor_stage.py tests the bound itself


@pytest.mark.parametrize("log, named", [("runs/.requests/r1", "runs/.requests/r1"), (None, "")])
def test_a_request_logged_twice_is_refused_by_the_join_naming_the_log(log, named):
    """The duplicate is the log's: the error's source is the log's folder, never the labels file."""
    import pandas as pd

    live = pd.DataFrame({"request_id": ["x", "y", "x", "y", "x"], "row": [0, 0, 0, 0, 0], "prediction": [1, 0, 1, 0, 1]})
    labels = pd.DataFrame({"request_id": ["x"], "row": [0], "label": [1]})
    with pytest.raises(DataError) as caught:
        monitor.join_labels(live, labels, "label", source="labels.csv", log=log)
    assert str(caught.value).startswith("The request log must name each request id (and row) once. Got 'x' row 0 "
                                        "3 times among 5 duplicated rows instead.")
    assert caught.value.source == named
