"""The three stages' work as one plain Python process: the benchmark's baseline.

Same functions, same parameters (parameters/default.yaml) as the stage notebooks, but no
kernels, no papermill and no reports. Usage: python benchmarks/_plain_pipeline.py OUT_DIR
"""

import sys
from pathlib import Path

from mlops_kit import data, evaluate, model_io, train
from mlops_kit._plots import pyplot
from mlops_kit.params import load_params

out = Path(sys.argv[1]) / "artifacts"  # laid out like a run folder's artifacts/
out.mkdir(parents=True, exist_ok=True)
p = load_params().params

dataset = data.load_dataset(p.data.source, p.data.target)
checked = data.validate_dataset(dataset, task=p.task, min_rows=p.data.min_rows, test_size=p.data.test_size)
data.summarize(checked, p.data.target)
schema = data.infer_schema(checked, p.data.target)
train_rows, test_rows = data.split_dataset(checked, p.data.target, test_size=p.data.test_size, seed=p.seed)
data.save_splits(train_rows, test_rows, schema, out)
data.plot_target(train_rows, p.data.target, checked.task, out)

train_rows, test_rows, schema = data.load_splits(out)
result = train.train_model(train_rows, schema, model=p.train.model, params=p.train.params, seed=p.seed,
                           cv_folds=p.train.cv_folds)
train.save_trained(result, schema, test_rows, out, model=p.train.model, params=p.train.params, seed=p.seed)

model = model_io.load_model(out)
X, y = train.features_and_target(test_rows, schema)
metrics = evaluate.compute_metrics(model, X, y, schema["task"])
evaluate.plot_evaluation(model, X, y, schema["task"], out)
gate = evaluate.check_gate(metrics, p.evaluate.gate, schema["task"])
evaluate.save_metrics(out, schema["task"], metrics, gate, data_fingerprint=schema.get("fingerprint"),
                      model=p.train.model)
pyplot().close("all")
print(metrics["accuracy"])
