"""The model server: a small ASGI app in the image and behind ``mlops-kit serve``.

Public API: :func:`create_app`, :class:`ServeSettings`, :func:`serve`,
:data:`SERVING_REQUIREMENTS`. In the image: ``python -m mlops_kit.serving --model-dir DIR
--host 0.0.0.0 --port PORT``.

Importing this package is cheap (the app and its dependencies load on first use), so the
image builder can read :data:`SERVING_REQUIREMENTS` without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: Distributions the server imports at run time (the image installs these, pinned to the
#: training environment's versions, and nothing else of the kit's dependencies). pandas is
#: not among them: kit models are called through numpy (see ``_predictor``).
SERVING_REQUIREMENTS = (
    "numpy", "scipy", "scikit-learn", "skops",
    "starlette", "uvicorn", "orjson", "msgspec", "prometheus-client",
    "uvloop", "httptools", "threadpoolctl",
)

#: What the server imports when the model is ONNX (the lean image): no scikit-learn, scipy,
#: skops or pandas. pydantic reads the artifact catalog's documents.
ONNX_SERVING_REQUIREMENTS = (
    "numpy", "onnxruntime", "pydantic",
    "starlette", "uvicorn", "orjson", "msgspec", "prometheus-client",
    "uvloop", "httptools",
)

__all__ = ["SERVING_REQUIREMENTS", "ONNX_SERVING_REQUIREMENTS", "INSTANCE_ENV", "INSTANCE_HEADER", "ENVIRONMENT",
           "ADMIN_TOKEN", "ADMIN_TOKEN_HEADER", "ServeSettings",
           "create_app", "serve", "Batch", "OnnxModel", "load_onnx"]

from ._settings import ADMIN_TOKEN, ADMIN_TOKEN_HEADER, ENVIRONMENT, INSTANCE_ENV, INSTANCE_HEADER  # noqa: E402 - cheap: no app, no model libraries

if TYPE_CHECKING:  # pragma: no cover
    from ._server import serve
    from ._settings import ServeSettings
    from .app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "ServeSettings":
        from ._settings import ServeSettings
        return ServeSettings
    if name == "serve":
        from ._server import serve
        return serve
    if name == "Batch":                   # for compile.py (the ONNX check)
        from ._validation import Batch
        return Batch
    if name in ("OnnxModel", "load_onnx"):
        from . import _onnx
        return _onnx.OnnxModel if name == "OnnxModel" else _onnx.load
    raise AttributeError(f"module 'mlops_kit.serving' has no attribute {name!r}")
