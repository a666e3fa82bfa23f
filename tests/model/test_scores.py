"""bridle/model/scores.py: the class scores and the top-k that `/classify`, the batch job and the
calibration share."""

from __future__ import annotations

import numpy as np

from bridle.model.scores import scores, top_k_indices


def test_top_k_is_highest_first_with_ties_in_label_order() -> None:
    probs = np.array([0.1, 0.4, 0.1, 0.4])  # (C,)
    assert top_k_indices(probs, 3).tolist() == [1, 3, 0]
    assert top_k_indices(probs, 10).tolist() == [1, 3, 0, 2]  # k past C: every label


def test_top_k_of_rows_is_each_row_s() -> None:
    probs = scores(np.array([[0.0, 2.0, 1.0], [3.0, 3.0, -1.0]]), "softmax")  # (R, C)
    assert top_k_indices(probs, 2).tolist() == [[1, 2], [0, 1]]
