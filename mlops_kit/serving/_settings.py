"""The server's limits, from flags or the environment (the image passes them as env)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from importlib.util import find_spec
from typing import Mapping

from ..errors import ParameterError, ParameterProblem

#: How unseen categories are treated: ``tolerate`` passes them to the model (its one-hot
#: encoder ignores them: every column of that feature is 0); ``reject`` answers 422.
UNKNOWN_CATEGORY_POLICIES = ("tolerate", "reject")
#: What calls the model: ``auto`` the ONNX model when 04_package compiled and verified one,
#: else the skops pipeline; ``onnx`` or ``skops`` insist on one.
RUNTIMES = ("auto", "onnx", "skops")
#: The event loop: asyncio's own, or uvloop (about 15 % more one-row requests per second,
#: but under 32 connections its p99 reached 6 x p50 for 100-row requests and 10 x for the
#: skops model, against 1.5-3 x on asyncio's loop; docs/architecture.md, "The tail").
LOOPS = ("asyncio", "uvloop")

#: setting name -> environment variable
ENVIRONMENT = {
    "max_rows": "MLOPS_KIT_MAX_ROWS",
    "max_body_bytes": "MLOPS_KIT_MAX_BODY_BYTES",
    "unknown_categories": "MLOPS_KIT_UNKNOWN_CATEGORIES",
    "model_name": "MLOPS_KIT_MODEL_NAME",
    "runtime": "MLOPS_KIT_RUNTIME",
    "loop": "MLOPS_KIT_LOOP",
    "max_connections": "MLOPS_KIT_MAX_CONNECTIONS",
    "header_timeout": "MLOPS_KIT_HEADER_TIMEOUT",
    "max_model_memory": "MLOPS_KIT_MAX_MODEL_MEMORY",
    "log_requests": "MLOPS_KIT_LOG_REQUESTS",
    "log_sample": "MLOPS_KIT_LOG_SAMPLE",
    "drift_window": "MLOPS_KIT_DRIFT_WINDOW",
    "log_max_file_bytes": "MLOPS_KIT_LOG_MAX_FILE_BYTES",
    "log_max_total_bytes": "MLOPS_KIT_LOG_MAX_TOTAL_BYTES",
    "admin_port": "MLOPS_KIT_ADMIN_PORT",
    "admin_token": "MLOPS_KIT_ADMIN_TOKEN",
}
_INTEGERS = ("max_rows", "max_body_bytes", "max_connections", "max_model_memory", "drift_window",
             "log_max_file_bytes", "log_max_total_bytes", "admin_port")
#: Environment variable a deployer sets to a fresh random value (letters and digits); the
#: server names it in the INSTANCE_HEADER of /v2/health/ready, so that the deployer knows the
#: server that answers is the one it just started, not another process on the port.
INSTANCE_ENV = "MLOPS_KIT_INSTANCE"
INSTANCE_HEADER = "x-mlops-kit-instance"
#: The request header that carries the admin token (``admin_token``) to the admin port. Not
#: ``Authorization``: the API server's pod proxy, the way `mlops-kit monitor` reaches the port,
#: deletes that header once it has authenticated the caller (kubernetes/kubernetes,
#: staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go, WithAuthentication:
#: ``req.Header.Del("Authorization")``), and Go's ReverseProxy under the proxy handler
#: (staging/src/k8s.io/apimachinery/pkg/util/proxy/upgradeaware.go, UpgradeAwareHandler.ServeHTTP:
#: ``utilnet.CloneHeader`` then ``httputil.NewSingleHostReverseProxy``) drops only the hop-by-hop
#: headers (Connection, Keep-Alive, Proxy-Authorization, TE, Trailer, Transfer-Encoding, Upgrade):
#: a header of the kit's own name reaches the pod as sent.
ADMIN_TOKEN_HEADER = "x-mlops-kit-admin-token"
#: An admin token: 32 to 256 characters of the URL-safe base64 alphabet (``secrets.token_urlsafe``).
ADMIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,256}")
#: The request line and headers of one request, in bytes at most (431 beyond; nginx allows
#: 32 KiB, Node.js 16 KiB). Not a setting: no client of a prediction API needs more.
MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Limits of one server. The defaults are those of the ``serve`` parameter section."""

    max_rows: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    unknown_categories: str = "tolerate"
    #: the model's name in the v2 API paths (default: the card's ``model``, e.g. logistic_regression)
    model_name: str | None = None
    runtime: str = "auto"
    loop: str = "asyncio"
    #: open connections at most per worker; one more is answered 503 and closed
    max_connections: int = 1000
    #: seconds a client has to send a request's line and headers, from its connection or the
    #: request's first byte (408 and closed after; a keep-alive connection idles 5 s at most)
    header_timeout: float = 10.0
    #: bytes of memory the model may take, beyond what the process held before, while it is
    #: loaded and warmed up (RLIMIT_DATA for that time): a model that needs more is refused
    #: instead of taking the machine's memory (an ONNX ConstantOfShape of 10^9 doubles: 8 GB)
    max_model_memory: int = 6 * 1024 ** 3
    #: the request log (``serve.monitor``): its folder, and the share of requests written there
    #: (0: none); files rotate at ``log_max_file_bytes``, the oldest go beyond ``log_max_total_bytes``
    log_requests: str | None = None
    log_sample: float = 0.0
    log_max_file_bytes: int = 16 * 1024 ** 2
    log_max_total_bytes: int = 256 * 1024 ** 2
    #: rows in the sliding window whose drift /metrics reports
    drift_window: int = 1000
    #: the admin port: the request log's files (GET /requests, /requests/{name}), never on the
    #: public port; only with a request log folder (serving/_admin.py)
    admin_port: int | None = None
    #: the token a request to the admin port must carry in ADMIN_TOKEN_HEADER; without one the
    #: admin port refuses every request (never in a repr, never a flag: a flag shows in `ps`)
    admin_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = []
        for name, minimum in (("max_rows", 1), ("max_body_bytes", 1024), ("max_connections", 1),
                              ("max_model_memory", 64 * 1024 ** 2), ("drift_window", 1),
                              ("log_max_file_bytes", 1024), ("log_max_total_bytes", 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                problems.append(ParameterProblem("serve settings", name, f"an integer >= {minimum}", repr(value)))
        timeout = self.header_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            problems.append(ParameterProblem("serve settings", "header_timeout", "seconds, more than 0 and at most 3600",
                                             repr(timeout)))
        if self.unknown_categories not in UNKNOWN_CATEGORY_POLICIES:
            problems.append(ParameterProblem("serve settings", "unknown_categories",
                                             " or ".join(UNKNOWN_CATEGORY_POLICIES), repr(self.unknown_categories)))
        if self.runtime not in RUNTIMES:
            problems.append(ParameterProblem("serve settings", "runtime", " or ".join(RUNTIMES), repr(self.runtime)))
        if self.loop not in LOOPS:
            problems.append(ParameterProblem("serve settings", "loop", " or ".join(LOOPS), repr(self.loop)))
        elif self.loop == "uvloop" and find_spec("uvloop") is None:
            problems.append(ParameterProblem("serve settings", "loop", "asyncio (uvloop is not installed here)",
                                             repr(self.loop)))
        if self.model_name is not None and (not self.model_name or "/" in self.model_name):
            problems.append(ParameterProblem("serve settings", "model_name", "a non-empty name without '/'",
                                             repr(self.model_name)))
        sample = self.log_sample
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 <= sample <= 1:
            problems.append(ParameterProblem("serve settings", "log_sample", "a share between 0 and 1", repr(sample)))
        elif sample > 0 and not self.log_requests:
            problems.append(ParameterProblem("serve settings", "log_requests",
                                             f"a folder for the request log (log_sample is {sample})", "none"))
        admin = self.admin_port
        if admin is not None:
            if isinstance(admin, bool) or not isinstance(admin, int) or not 0 < admin < 65536:
                problems.append(ParameterProblem("serve settings", "admin_port", "a port from 1 to 65535",
                                                 repr(admin)))
            elif not self.log_requests:
                problems.append(ParameterProblem("serve settings", "log_requests",
                                                 f"a folder for the request log (the admin port {admin} serves it)",
                                                 "none"))
        token = self.admin_token
        if token is not None and (not isinstance(token, str) or ADMIN_TOKEN.fullmatch(token) is None):
            # the value itself is never shown: only what is wrong with it
            found = (f"{len(token)} characters" if isinstance(token, str) and not 32 <= len(token) <= 256
                     else "other characters" if isinstance(token, str) else type(token).__name__)
            problems.append(ParameterProblem("serve settings", "admin_token",
                                             "32 to 256 characters of A-Z, a-z, 0-9, '-' and '_' (env "
                                             f"{ENVIRONMENT['admin_token']})", found))
        if isinstance(self.log_max_file_bytes, int) and isinstance(self.log_max_total_bytes, int) and \
                self.log_max_file_bytes > self.log_max_total_bytes:
            problems.append(ParameterProblem("serve settings", "log_max_file_bytes",
                                             f"at most log_max_total_bytes ({self.log_max_total_bytes})",
                                             repr(self.log_max_file_bytes)))
        if problems:
            raise ParameterError(problems)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "ServeSettings":
        """Settings from ``MLOPS_KIT_*`` variables; ``overrides`` that are not None win."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        problems = []
        for field in fields(cls):
            variable = ENVIRONMENT[field.name]
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            if field.name in _INTEGERS:
                try:
                    values[field.name] = int(raw.replace("_", ""))
                except ValueError:
                    problems.append(ParameterProblem("environment", variable, "an integer", repr(raw)))
            elif field.name in ("header_timeout", "log_sample"):
                try:
                    values[field.name] = float(raw)
                except ValueError:
                    expected = "a number of seconds" if field.name == "header_timeout" else "a share between 0 and 1"
                    problems.append(ParameterProblem("environment", variable, expected, repr(raw)))
            else:
                values[field.name] = raw
        if problems:
            raise ParameterError(problems)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that gives these settings back (for worker processes)."""
        return {ENVIRONMENT[f.name]: str(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None}

