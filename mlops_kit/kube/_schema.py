"""Objects checked against the real Kubernetes schema (kubernetes-validate, strict: an unknown
field is an error), offline; the first problem of each object is reported."""

from __future__ import annotations

Problem = tuple[str, str, str, str]      # (source, Kind/name, field path, message)


def schema_problems(objects: list[dict], version: str, *, source: str = "rendered") -> list[Problem]:
    import kubernetes_validate
    from kubernetes_validate import utils

    problems: list[Problem] = []
    for obj in objects:
        where = _where(obj, source)
        doc = {k: v for k, v in obj.items() if k != "__source__"}
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path) or "(object)"
            problems.append((where[0], where[1], path, exc.message))
        except (utils.SchemaNotFoundError, utils.VersionNotSupportedError, utils.InvalidSchemaError) as exc:
            problems.append((where[0], where[1], "apiVersion/kind", exc.message))
        except KeyError as exc:
            problems.append((where[0], where[1], str(exc.args[0]), "required field missing"))
    return problems


def _where(obj: dict, source: str) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return obj.get("__source__", source), f"{obj.get('kind', '?')}/{meta.get('name', '?')}"
