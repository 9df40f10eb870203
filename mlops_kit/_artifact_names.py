"""The file names of the artifact catalog (:mod:`mlops_kit.artifacts`), without its models.

The model server imports these (it runs in an image without pydantic); everything else uses
the catalog itself. No other module spells an artifact's file name.
"""

TRAIN_SPLIT = "train.parquet"
TEST_SPLIT = "test.parquet"
SCHEMA = "schema.json"
TARGET_PLOT = "target.png"
MODEL = "model.skops"
MODEL_CARD = "model_card.json"
EXAMPLES = "examples.json"
MONITOR_PROFILE = "monitor_profile.json"
METRICS = "metrics.json"
EVALUATION_PLOT = "evaluation.png"
ONNX_MODEL = "model.onnx"
ONNX_REPORT = "onnx.json"
IMAGE = "image.json"
RELEASE = "release.json"
MONITOR_PROFILE = "monitor_profile.json"
MONITOR_REPORT = "monitor_report.json"
MONITOR_PLOT = "monitor_drift.png"
RUN = "run.json"
CHAMPION = "champion.json"
SWEEP = "sweep.json"
#: the key of the release history inside its ConfigMap (microk8s)
RELEASE_HISTORY_KEY = "releases.json"
