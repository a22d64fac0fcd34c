"""The localisation benchmark's tile lever: tile labels from logo boxes, and brands reported from photo + tiles."""

from __future__ import annotations

import numpy as np

from bench.localisation import NEITHER, reported_with_tiles, tile_labels, tile_max_scores

LABELS = ["adidas", "neither", "nike"]


def test_a_tile_is_its_brand_only_where_it_holds_most_of_a_logo_box():
    # 700 px, 2 x 2 tiles of 400 px at 0 and 300: a corner logo lies in the top-left tile alone.
    assert tile_labels([(10, 10, 60, 60)], 700, 700, 2, "nike") == ["nike", NEITHER, NEITHER, NEITHER]
    # A central logo: a quarter of it in the top-left tile (unknown), half or all of it in the others.
    assert tile_labels([(380, 380, 420, 420)], 700, 700, 2, "nike") == [None, "nike", "nike", "nike"]
    assert tile_labels([], 700, 700, 2, NEITHER) == [NEITHER] * 4
    assert tile_labels([], 700, 700, 2, "nike") == [None] * 4  # a brand photo without boxes: tiles unknown


def test_a_second_brand_passing_its_threshold_on_one_tile_is_reported():
    whole = {"scores": np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]), "region_scores": np.zeros((2, 3))}
    tile_scores = np.full((8, 3), 0.1)
    tile_scores[2] = [0.1, 0.2, 0.7]        # photo 0's third tile: nike
    tile_scores[5] = [0.6, 0.3, 0.1]        # photo 1's second tile: adidas, under its threshold
    tiles = {"scores": tile_scores, "region_scores": np.zeros((8, 3))}
    best = tile_max_scores(whole, tiles, 2)
    np.testing.assert_allclose(best, [[0.9, 0.2, 0.7], [0.6, 0.8, 0.1]], rtol=1e-6)
    found = reported_with_tiles(whole, tiles, 2, LABELS, {"adidas": 0.65, "nike": 0.65})
    assert found == [{"adidas", "nike"}, set()]


def test_product_multibrand_rates_count_both_brands_extras_and_false_alarms():
    from bench.multibrand_product import measure

    truth = {"c0": {"kind": "side_by_side", "labels": ["nike", "bmw"]},
             "c1": {"kind": "pasted_small", "labels": ["nike", "bmw"]},
             "t0": {"kind": "test", "labels": ["nike"]}, "t1": {"kind": "test", "labels": ["bmw"]},
             "t2": {"kind": "test", "labels": []}, "t3": {"kind": "test", "labels": []}}
    found = {"c0": ("nike", {"nike", "bmw"}), "c1": ("nike", {"nike"}),
             "t0": ("nike", {"nike", "dhl"}), "t1": ("dhl", {"dhl"}),  # a wrong label is no extra brand
             "t2": ("neither", set()), "t3": ("neither", {"ford"})}
    rates = measure(found, truth)
    assert rates["multi_brand_recall"] == 0.5 and rates["multi_brand_recall_by_kind"] == {"side_by_side": 1.0, "pasted_small": 0.0}
    assert rates["single_brand_false_extra_rate"] == 0.5 and rates["logo_free_with_a_brand"] == 0.5
    assert rates["test_accuracy"] == 0.75 and rates["test_brand_accuracy"] == 0.5 and rates["test_false_alarm_rate"] == 0.0
    assert (rates["n_composites"], rates["n_test"]) == (2, 4)
