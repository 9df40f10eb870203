"""Run by the MLflow venv's python: save the kit's skops model as an MLflow model.

    /tmp/mlflow-venv/bin/python benchmarks/_mlflow_model.py MODEL_DIR OUT_DIR
"""

import sys

import mlflow.sklearn
import skops.io as sio

data = open(f"{sys.argv[1]}/model.skops", "rb").read()
model = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
# cloudpickle: MLflow 3 saves with skops by default and refuses numpy.dtype as untrusted
mlflow.sklearn.save_model(model, sys.argv[2], serialization_format="cloudpickle")
