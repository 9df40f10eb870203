"""The baseline of benchmarks/scale.py: read, split, fit and score the generated table in one
plain pandas + scikit-learn process, with the same preprocessing the kit chooses for it (the
ID dropped, calendar features of the date, yes/no as 0/1, one-hot with the rare levels of
high-cardinality columns grouped; for histogram gradient boosting ordinal codes, split on
natively as categories).

    python benchmarks/_plain_scale.py TABLE.csv MODEL
"""

import sys

import numpy as np
import pandas as pd
from sklearn import metrics
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

path, model = sys.argv[1], sys.argv[2]
frame = pd.read_csv(path, engine="pyarrow").drop(columns=["customer_id"])
signup = pd.to_datetime(frame.pop("signup"))
for part in ("year", "month", "day", "day_of_week"):
    frame[f"signup_{part}"] = getattr(signup.dt, part).astype(float)
frame["member"] = frame["member"].map({"yes": 1.0, "no": 0.0})
y = frame.pop("label")
categorical = ["zip"] + [f"c{i}" for i in range(1, 9)]
numeric = [c for c in frame.columns if c not in categorical]
X_train, X_test, y_train, y_test = train_test_split(frame, y, test_size=0.2, random_state=42, stratify=y)

numbers = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
if model == "hist_gradient_boosting":
    def encode(cap=None):
        return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                              max_categories=cap)
    # categorical_features: the kit's choice too (mlops_kit.train.build_pipeline): the
    # ordinal codes of the categories are split on natively by the trees
    estimator = HistGradientBoostingClassifier(random_state=42, categorical_features=list(range(len(categorical))))
    # the 250-level cap only where a column has more levels (zip), as the kit does
    # numbers imputed and scaled for the trees too: the kit's pipeline does that for every model
    preprocess = ColumnTransformer([("categorical", encode(), categorical[1:]), ("capped", encode(250), ["zip"]),
                                    ("numeric", numbers, numeric)], sparse_threshold=0)
else:
    preprocess = ColumnTransformer([
        ("numeric", numbers, numeric),
        ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical[1:8]),
        ("grouped", OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=30), ["zip", "c8"])])
    estimator = LogisticRegression(C=1.0, max_iter=1000, random_state=42)
pipeline = Pipeline([("preprocess", preprocess), ("model", estimator)]).fit(X_train, y_train)
predicted = pipeline.predict(X_test)
proba = pipeline.predict_proba(X_test)[:, 1]
print({"accuracy": metrics.accuracy_score(y_test, predicted),
       "balanced_accuracy": metrics.balanced_accuracy_score(y_test, predicted),
       "roc_auc": metrics.roc_auc_score(y_test, proba), "pr_auc": metrics.average_precision_score(y_test, proba)})
