"""Comparison selection methods: Cui EMD, Chakraborty domain classifier and k-means, Huh subsets."""

import math

import numpy as np
import ot
import pytest

from selection import domain_classifier, emd_similarity, huh_subsets, kmeans_filter

# --- Cui et al. EMD similarity ------------------------------------------------------------------


def test_cui_published_emd_to_similarity():
    # Cui et al. Fig. 5 / FACTS.md: ImageNet -> CUB-200 EMD 57.53 (sim 0.563), iNat -> CUB 42.96 (0.651).
    assert round(float(emd_similarity.similarity_from_emd(57.53)), 3) == 0.563
    assert round(float(emd_similarity.similarity_from_emd(42.96)), 3) == 0.651


def test_identical_domains_have_zero_emd_and_similarity_one():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 5))
    labels = rng.integers(0, 4, size=60)
    assert emd_similarity.emd_similarity(features, labels, features, labels) == pytest.approx(1.0)


def test_two_point_masses_at_distance_d():
    d = 7.5
    source = np.zeros((3, 4))
    target = np.zeros((2, 4))
    target[:, 2] = d
    assert emd_similarity.emd(source, np.ones(3), target, np.ones(2)) == pytest.approx(d)
    sim = emd_similarity.emd_similarity(source, np.zeros(3, int), target, np.zeros(2, int), gamma=0.1)
    assert sim == pytest.approx(math.exp(-0.1 * d))


def test_class_weights_are_image_shares():
    # Source: class 0 (3 images) at x=0, class 1 (1 image) at x=4; target: one class at x=0.
    # Only class 1's quarter of the mass moves, by 4: EMD = 1.
    source = np.array([[0.0], [0.0], [0.0], [4.0]])
    sim = emd_similarity.emd_similarity(source, np.array([0, 0, 0, 1]), np.zeros((5, 1)), gamma=1.0)
    assert -math.log(sim) == pytest.approx(1.0)


def test_class_means_multi_hot_and_absent_labels():
    features = np.array([[1.0, 0.0], [3.0, 2.0]])
    multi_hot = np.array([[1, 1, 0], [1, 0, 0]])
    means, counts = emd_similarity.class_means(features, multi_hot)
    np.testing.assert_allclose(means[0], [2.0, 1.0])
    np.testing.assert_allclose(means[1], [1.0, 0.0])
    assert np.isnan(means[2]).all()
    np.testing.assert_array_equal(counts, [2, 1, 0])


def test_label_similarities_match_lp_emd():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(5, 3))
    target = rng.normal(size=(7, 3))
    weights = rng.random(7)
    sims = emd_similarity.label_similarities(means, target, weights, gamma=0.3)
    cost = np.linalg.norm(means[:, None] - target[None], axis=-1)
    for i in range(5):
        expected = ot.emd2(np.ones(1), weights / weights.sum(), cost[i : i + 1])
        assert sims[i] == pytest.approx(math.exp(-0.3 * expected))


def test_emd_select_labels_picks_closest_source_labels():
    # Source labels 0..4 centred at x = 0, 10, 20, 30, 40; target images around x = 21.
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 20)
    features = np.stack([labels * 10.0 + rng.normal(size=100) * 0.1, rng.normal(size=100) * 0.1], axis=1)
    target = np.stack([21.0 + rng.normal(size=30) * 0.1, np.zeros(30)], axis=1)
    counts = np.array([100, 200, 300, 400, 500])
    # Label 5 has no source features (absent from the sample): it can never be chosen.
    planned = emd_similarity.emd_select_labels(
        features, labels, target, num_source_labels=6, k=2, label_counts=np.append(counts, 9)
    )
    np.testing.assert_array_equal(planned, [0, 0, 300, 400, 0, 0])
    uniform = emd_similarity.emd_select_labels(features, labels, target, num_source_labels=6, k=3, size=90)
    np.testing.assert_allclose(uniform, [0, 30, 30, 30, 0, 0])
    with pytest.raises(ValueError):
        emd_similarity.emd_select_labels(features, labels, target, num_source_labels=6, k=6, size=90)


# --- Chakraborty et al. domain classifier ---------------------------------------------------------


def _shifted_gaussians(seed: int):
    """Source: 200 points at N(0, 1) and 200 at N(3, 1) in 4-d; target: 100 points at N(4, 1)."""
    rng = np.random.default_rng(seed)
    far = rng.normal(size=(200, 4))
    near = rng.normal(size=(200, 4)) + 3.0
    target = rng.normal(size=(100, 4)) + 4.0
    return np.concatenate([far, near]), target


def test_domain_classifier_ranks_nearer_source_points_higher():
    source, target = _shifted_gaussians(0)
    scores = domain_classifier.domain_classifier_scores(source, target, seed=0)
    assert scores.shape == (400,) and ((scores >= 0) & (scores <= 1)).all()
    # AUC of near (label 1) vs far (label 0): every near/far pair ordered correctly, almost always.
    near, far = scores[200:], scores[:200]
    auc = (near[:, None] > far[None, :]).mean()
    assert auc > 0.99
    # The classifier is linear: its score rises along the shift direction.
    projection = source.sum(axis=1)
    assert np.corrcoef(np.argsort(np.argsort(scores)), np.argsort(np.argsort(projection)))[0, 1] > 0.95
    ids = [f"src{i:03d}".encode() for i in range(400)]
    copies = domain_classifier.domain_classifier_select(scores, ids, 150)
    assert len(copies) == 150 and set(copies.values()) == {1}
    assert sum(int(k[3:]) >= 200 for k in copies) >= 145


def test_domain_classifier_is_balanced_against_many_source_rows():
    # Source N(0, 1), target N(2, 1), 20x more source rows. With equal class weight the Bayes
    # posterior at the midpoint x = 1 is 1/2 (the density ratio is 1 there); unweighted it would be
    # about 1/21.
    rng = np.random.default_rng(1)
    source = rng.normal(size=(4000, 1))
    target = rng.normal(size=(200, 1)) + 2.0
    model = domain_classifier.fit_domain_classifier(source, target)
    p_mid, p_far = model.predict_proba(np.array([[1.0], [-1.0]]))[:, 1]
    assert 0.4 < p_mid < 0.6
    assert p_far < 0.05


def test_select_top_examples_is_deterministic_and_checks_inputs():
    ids = [b"a", b"b", b"c", b"d"]
    assert domain_classifier.select_top_examples(np.array([0.5, 0.9, 0.5, 0.1]), ids, 2) == {b"b": 1, b"a": 1}
    with pytest.raises(ValueError):
        domain_classifier.select_top_examples(np.zeros(4), ids, 5)
    with pytest.raises(ValueError):
        domain_classifier.select_top_examples(np.zeros(3), ids, 1)
    with pytest.raises(ValueError):
        domain_classifier.select_top_examples(np.array([1.0, 1.0, 0.0]), [b"x", b"x", b"y"], 2)


# --- Chakraborty et al. k-means filtering ---------------------------------------------------------


def test_kmeans_selection_takes_source_points_from_target_clusters():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    target = np.concatenate([c + rng.normal(size=(40, 2)) * 0.3 for c in centres])
    inside = np.concatenate([c + rng.normal(size=(10, 2)) * 0.3 for c in centres])
    outside = rng.uniform(-30, 40, size=(60, 2))
    outside = outside[np.min(np.linalg.norm(outside[:, None] - centres[None], axis=-1), axis=1) > 4.0]
    source = np.concatenate([outside, inside])
    ids = [f"{i}".encode() for i in range(len(source))]
    copies = kmeans_filter.kmeans_filter_select(source, target, ids, size=30, n_clusters=3, aggregate="min")
    assert set(copies) == {f"{i}".encode() for i in range(len(outside), len(source))}
    centroids = kmeans_filter.target_centroids(target, 3, seed=0)
    assert np.min(np.linalg.norm(centroids[:, None] - centres[None], axis=-1), axis=0).max() < 0.3


def test_kmeans_min_and_mean_aggregations_differ_as_in_the_paper():
    # Equilateral triangle of centres with side 1: the middle point is 1/sqrt(3) from each centre
    # (mean 0.577, min 0.577); a vertex is (0, 1, 1) away (mean 0.667, min 0).
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    middle = centres.mean(axis=0, keepdims=True)
    source = np.concatenate([centres[:1], middle])
    by_min = kmeans_filter.kmeans_filter_scores(source, centres, aggregate="min")
    by_mean = kmeans_filter.kmeans_filter_scores(source, centres, aggregate="mean")
    np.testing.assert_allclose(by_min, [0.0, 1 / math.sqrt(3)])
    np.testing.assert_allclose(by_mean, [2 / 3, 1 / math.sqrt(3)])
    l1 = kmeans_filter.kmeans_filter_scores(np.array([[1.0, 1.0]]), np.zeros((1, 2)), p=1)
    np.testing.assert_allclose(l1, [2.0])


# --- Huh et al. subsets ---------------------------------------------------------------------------

# root -> animal -> {dog -> {husky, pug}, cat}; root -> thing -> car; "fungus" is outside the tree.
TOY_TREE = {
    "root": ["animal", "thing"],
    "animal": ["dog", "cat"],
    "dog": ["husky", "pug"],
    "thing": ["car"],
}
TOY_LABELS = ["husky", "pug", "cat", "car", "fungus"]


def _names(remap):
    return [remap.names[i] for i in remap.index]


def test_depth_coarsening_maps_labels_to_ancestors():
    def at(depth):
        return _names(huh_subsets.depth_coarsening(TOY_LABELS, TOY_TREE, depth))

    assert at(1) == ["animal", "animal", "animal", "thing", "fungus"]
    assert at(2) == ["dog", "dog", "cat", "car", "fungus"]
    assert at(9) == TOY_LABELS
    remap = huh_subsets.depth_coarsening(TOY_LABELS, TOY_TREE, 0)
    assert remap.names == ["root", "fungus"]
    np.testing.assert_array_equal(remap.counts(np.array([1, 2, 3, 4, 5])), [10, 5])


def test_bottom_up_merges_only_parents_whose_children_are_all_leaves():
    sets = huh_subsets.bottom_up_label_sets(TOY_LABELS, TOY_TREE)
    assert [_names(s) for s in sets] == [
        TOY_LABELS,
        # dog's children are leaves -> dog; thing's only child is a leaf -> thing;
        # animal waits while its child dog is internal.
        ["dog", "dog", "cat", "thing", "fungus"],
        ["animal", "animal", "animal", "thing", "fungus"],
        ["root", "root", "root", "root", "fungus"],
    ]
    assert _names(huh_subsets.bottom_up_coarsening(TOY_LABELS, TOY_TREE, 2)) == _names(sets[2])
    assert _names(huh_subsets.bottom_up_coarsening(TOY_LABELS, TOY_TREE, 10)) == _names(sets[-1])


def test_hierarchy_must_be_a_tree():
    with pytest.raises(ValueError, match="two parents"):
        huh_subsets.parent_map({"a": ["c"], "b": ["c"]})
    with pytest.raises(ValueError, match="cycle"):
        huh_subsets.parent_map({"a": ["b"], "b": ["a"]})


def test_images_per_class_and_random_classes():
    counts = np.array([1000, 300, 0, 800, 50])
    np.testing.assert_array_equal(huh_subsets.images_per_class(counts, 500), [500, 300, 0, 500, 50])
    planned = huh_subsets.random_classes(counts, 2, seed=0)
    chosen = np.flatnonzero(planned)
    assert len(chosen) == 2 and 2 not in chosen
    np.testing.assert_array_equal(planned[chosen], counts[chosen])
    np.testing.assert_array_equal(planned, huh_subsets.random_classes(counts, 2, seed=0))
    # Over seeds every non-empty label is drawn, the empty one never.
    drawn = {int(i) for s in range(50) for i in np.flatnonzero(huh_subsets.random_classes(counts, 2, seed=s))}
    assert drawn == {0, 1, 3, 4}
    with pytest.raises(ValueError):
        huh_subsets.random_classes(counts, 5, seed=0)
