"""A minimal Starlette server on the same model, as one would write it in an afternoon:
JSON records -> a pandas DataFrame -> the scikit-learn pipeline -> JSON. No validation.

    python benchmarks/_minimal_starlette.py MODEL_DIR PORT
"""

import sys

import pandas as pd
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlops_kit.model_io import load_model

model = load_model(sys.argv[1])


async def predict(request: Request) -> JSONResponse:
    frame = pd.DataFrame(await request.json())
    return JSONResponse({"predictions": model.predict(frame).tolist(),
                         "probabilities": model.predict_proba(frame).tolist()})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/v2/health/ready", ready)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
