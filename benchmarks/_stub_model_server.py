"""The kit's server with the model call taken out: for benchmarks/serving.py's "model call
stubbed" row, what HTTP, parsing, validation and the JSON answer cost on their own.

    python benchmarks/_stub_model_server.py MODEL_DIR PORT

Each request is parsed and validated as usual; the predictor answers the first prediction
it made for that many rows again (no onnxruntime call). Not a server for anything else.
"""

import sys

import uvicorn

from mlops_kit.serving._server import uvicorn_options
from mlops_kit.serving._settings import ServeSettings
from mlops_kit.serving.app import create_app

settings = ServeSettings(runtime="onnx")
app = create_app(sys.argv[1], settings)
predictor = app.service.predictor
model_call = predictor.predict
answers: dict[int, tuple] = {}


def stubbed(batch):
    if batch.rows not in answers:
        answers[batch.rows] = model_call(batch)
    return answers[batch.rows]


predictor.predict = stubbed
uvicorn.run(app, **uvicorn_options(settings, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning"))
