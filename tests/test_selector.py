"""FeatureSelector: the search behind scikit-learn's feature-selector interface."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import check_estimator
from sklearn.utils.validation import check_is_fitted

import evojax_prune as ep
from evojax_prune.data import embedded

TINY = ep.preset("quick").replace(head={"hidden": 16}, train={"max_epochs": 3, "patience": 2},
                                  search={"population_size": 4, "generations": 1})


@pytest.fixture(scope="module")
def digits():
    return embedded.digits()


@pytest.fixture(scope="module")
def pipeline(digits):
    """A pipeline fitted on arrays; its validation split and OoD data have the FeatureSet's shapes,
    so that ``fit(FeatureSet)`` below reuses the compiled programs."""
    steps = Pipeline([("select", ep.FeatureSelector(config=TINY, seed=0)),
                      ("classify", LogisticRegression(max_iter=500))])
    with pytest.raises(NotFittedError):
        check_is_fitted(steps["select"])
    return steps.fit(digits.x_train, digits.y_train, select__ood=digits.ood_val,
                     select__X_val=digits.x_val, select__y_val=digits.y_val)


def test_pipeline_selects_the_most_accurate_members_mask(digits, pipeline):
    selector = pipeline["select"]
    check_is_fitted(selector)
    result = selector.result_
    assert isinstance(result, ep.SearchResult) and len(result.history) == 2
    # "accuracy": the best validation accuracy of the front, ties to fewer features.
    best = result.validation["accuracy"].max()
    ties = np.flatnonzero(result.validation["accuracy"] == best)
    assert selector.member_ in ties
    assert result.masks[selector.member_].sum() == result.masks[ties].sum(axis=1).min()
    np.testing.assert_array_equal(selector.support_, result.masks[selector.member_])
    np.testing.assert_array_equal(selector.get_support(), selector.support_)
    np.testing.assert_array_equal(selector.get_support(indices=True), np.flatnonzero(selector.support_))
    reduced = selector.transform(digits.x_test)
    np.testing.assert_array_equal(reduced, digits.x_test[:, selector.support_])
    assert not np.shares_memory(reduced, digits.x_test)  # a copy, N x k
    assert selector.n_features_in_ == 64 and list(selector.classes_) == list(range(10))
    assert 0.0 <= pipeline.score(digits.x_test, digits.y_test) <= 1.0
    with pytest.raises(ValueError, match="X has 63 features"):
        selector.transform(digits.x_test[:, :63])


def test_fit_on_a_featureset_and_the_members_it_can_choose(digits, pipeline):
    selector = ep.FeatureSelector(config=TINY, seed=0, member="mem").fit(digits)
    result = selector.result_
    # The same search as the pipeline's (same seed, same splits): the same front.
    np.testing.assert_array_equal(result.masks, pipeline["select"].result_.masks)
    assert selector.support_.sum() == result.masks.sum(axis=1).min()
    auroc = result.validation["auroc"]
    assert auroc[result.member_index("auroc")] == auroc.max()
    assert result.member_index(-1) == len(result.masks) - 1
    with pytest.raises(ValueError, match="member must be one of"):
        result.member_index("smallest")


def test_ood_as_a_parameter_and_a_new_member_without_a_new_search(digits, pipeline, monkeypatch):
    steps = Pipeline([("select", ep.FeatureSelector(config=TINY, seed=0, ood=digits.ood_val)),
                      ("classify", LogisticRegression(max_iter=500))])
    steps.fit(digits.x_train, digits.y_train, select__X_val=digits.x_val, select__y_val=digits.y_val)
    selector = steps["select"]
    # The same search as with fit's ood= keyword.
    np.testing.assert_array_equal(selector.result_.masks, pipeline["select"].result_.masks)
    import evojax_prune.selector as selector_module

    monkeypatch.setattr(selector_module, "run_search", lambda *args, **kwargs: pytest.fail("searched again"))
    selector.set_params(member="mem")
    result = selector.result_
    assert selector.member_ == result.member_index("mem")
    np.testing.assert_array_equal(selector.get_support(), result.masks[result.member_index("mem")])
    assert selector.transform(digits.x_test).shape[1] == result.masks.sum(axis=1).min()
    selector.set_params(member=99)
    with pytest.raises(ValueError, match=r"FeatureSelector\.member = 99"):
        selector.get_support()
    with pytest.raises(ValueError, match="a FeatureSet holds its own splits"):
        ep.FeatureSelector(config=TINY, ood=digits.ood_val).fit(digits)


def test_a_bad_x_is_named_before_anything_else():
    with pytest.raises(ValueError, match="Expected 2D array"):
        ep.FeatureSelector(config=TINY).fit(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        ep.FeatureSelector(config=TINY).fit(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="requires y to be passed"):  # sklearn's words for it
        ep.FeatureSelector(config=TINY).fit(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"classes \[7\] of y have one sample"):
        ep.FeatureSelector(config=TINY, ood=np.ones((2, 3))).fit(np.ones((5, 3)), [0, 0, 1, 1, 7])


def ood_stand_in(X):
    """OoD features made from the checks' own X (any width): its rows reversed, shifted by 3."""
    return np.asarray(X, np.float32)[::-1] + 3.0


def test_check_estimator():
    """scikit-learn's whole estimator suite (legacy checks too) on a tiny search: nothing fails.

    ``ood`` is a callable because the checks fit on arrays of many widths; with
    ``ood=None`` each fit is refused by design (the module docstring).
    """
    results = []
    check_estimator(ep.FeatureSelector(config=TINY, ood=ood_stand_in), on_fail=None, on_skip=None,
                    callback=lambda **result: results.append(result))
    failed = {r["check_name"]: f"{type(r['exception']).__name__}: {r['exception']}" for r in results
              if r["status"] in ("failed", "xfail")}
    assert not failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}  # runs only with SCIPY_ARRAY_API=1
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    assert {"check_transformer_general", "check_fit_idempotent", "check_requires_y_none",
            "check_n_features_in_after_fitting", "check_estimators_pickle", "check_fit2d_1sample",
            "check_pipeline_consistency", "check_transformer_preserve_dtypes"} <= passed


def test_arrays_without_ood_are_refused_and_the_default_split_is_stratified(digits):
    selector = ep.FeatureSelector(config=TINY)
    with pytest.raises(ValueError, match=r"needs ood=.*cannot be computed without them"):
        selector.fit(digits.x_train, digits.y_train)
    with pytest.raises(ValueError, match="do not pass y"):
        selector.fit(digits, digits.y_train)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    split = selector.search_features(digits.x_train, names[digits.y_train], digits.ood_val)
    assert len(split.x_val) == int(np.ceil(0.2 * len(digits.x_train)))
    assert len(split.x_train) + len(split.x_val) == len(digits.x_train)
    assert split.class_names == tuple(sorted(names)) and list(selector.classes_) == sorted(names)
    share = lambda labels: np.bincount(labels, minlength=10) / len(labels)
    np.testing.assert_allclose(share(split.y_val), share(split.y_train), atol=0.01)
    assert clone(selector).get_params() == selector.get_params()
