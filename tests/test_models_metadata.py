"""MetadataEncoder: standardised numerics with missing indicators, one-hot categories with an unknown slot."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

from medclf.errors import DataError
from medclf.models import MetadataEncoder

TRAIN = pd.DataFrame(
    {
        "age": [30.0, 50.0, np.nan, 70.0],
        "sex": ["male", "female", "female", None],
        "site": ["back", "face", "back", "trunk"],
    }
)


def test_fit_transform_matches_sklearn() -> None:
    enc = MetadataEncoder.fit(TRAIN, ["age", "sex", "site"], {"sex": "categorical"})
    assert enc.kinds == {"age": "numeric", "sex": "categorical", "site": "categorical"}
    x = enc.transform(TRAIN)
    assert x.shape == (4, enc.dim) == (4, 2 + 3 + 4)
    ref = StandardScaler().fit(TRAIN[["age"]].dropna()).transform(TRAIN[["age"]].fillna(0))[:, 0]
    np.testing.assert_allclose(x[[0, 1, 3], 0], ref[[0, 1, 3]], rtol=1e-6)
    assert x[2, 0] == 0 and x[2, 1] == 1 and x[0, 1] == 0
    names = enc.feature_names()
    assert x[3, names.index("sex=__unknown__")] == 1  # None -> unknown
    assert x[0, names.index("sex=male")] == 1
    assert np.allclose(x[:, 2:5].sum(axis=1), 1)


def test_unseen_category_nan_and_missing_column() -> None:
    enc = MetadataEncoder.fit(TRAIN, ["age", "site"])
    row = enc.transform({"age": float("nan"), "site": "scalp"})
    names = enc.feature_names()
    assert row[0, names.index("age__missing")] == 1
    assert row[0, names.index("site=__unknown__")] == 1
    assert np.isfinite(row).all()
    no_cols = enc.transform(pd.DataFrame({"path": ["a.png"]}))
    assert no_cols[0, names.index("site=__unknown__")] == 1


def test_json_round_trip() -> None:
    enc = MetadataEncoder.fit(TRAIN, ["age", "sex"])
    again = MetadataEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    np.testing.assert_array_equal(enc.transform(TRAIN), again.transform(TRAIN))


def test_missing_column_is_a_data_error() -> None:
    with pytest.raises(DataError, match="'weight'"):
        MetadataEncoder.fit(TRAIN, ["weight"])
