"""Register repository versions in MLflow's model registry.

One registered model per catalog name; one model version per distinct content digest,
found again through its ``sutazai.digest`` tag, so registering the same bytes twice
creates nothing. Each new version is linked to a small MLflow run (experiment
``sutazai-model-sync``) that records the manifest as an artifact, giving the registry UI
a lineage entry. Aliases (``champion``, ``challenger``) are how later stages select.

MLflow is imported lazily: it costs about a second and most CLI commands do not need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pydantic import BaseModel

from sutazai.errors import NotFoundError, RegistryError
from sutazai.repository.manifest import Manifest

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from sutazai.config import Settings

TAG = "sutazai."


class RegisteredVersion(BaseModel):
    name: str
    version: str
    repository_version: int
    digest: str
    created: bool
    run_id: str | None = None
    aliases: list[str] = []


def repository_uri(manifest: Manifest) -> str:
    """Where a version lives, independent of the machine: resolved by the repository."""
    return f"sutazai://repository/snapshots/{manifest.name}/{manifest.version}"


def version_tags(manifest: Manifest) -> dict[str, str]:
    return {
        f"{TAG}digest": manifest.digest,
        f"{TAG}repository_version": str(manifest.version),
        f"{TAG}source": manifest.source,
        f"{TAG}revision": manifest.revision,
        f"{TAG}format": manifest.format,
        f"{TAG}size": str(manifest.size),
        f"{TAG}license": manifest.license,
        f"{TAG}tasks": ",".join(manifest.tasks),
        f"{TAG}parent": manifest.parent or "",
    }


def describe(manifest: Manifest) -> str:
    files = "\n".join(f"- `{f.path}` ({f.size:,} bytes, sha256 `{f.digest[:16]}…`)"
                      for f in manifest.files[:20])
    more = f"\n- … and {len(manifest.files) - 20} more" if len(manifest.files) > 20 else ""
    return (
        f"{manifest.description or manifest.name} — SutazAI repository version "
        f"{manifest.ref}, {manifest.format}, tasks: {', '.join(manifest.tasks)}, licence: "
        f"{manifest.license}.\n\nSource `{manifest.source}` at revision `{manifest.revision}`; "
        f"content digest `{manifest.digest}`.\n\n{files}{more}"
    )


_ANSWERED: set[str] = set()


def _require_listening(tracking_uri: str) -> None:
    """Fail at once when an MLflow server's port refuses connections: MLflow's client
    would retry for two minutes, printing a warning per attempt, before failing."""
    import socket

    parts = urlparse(tracking_uri)
    if parts.scheme not in ("http", "https") or tracking_uri in _ANSWERED:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=5).close()
    except OSError as exc:
        raise RegistryError(
            f"MLflow at {tracking_uri} does not answer ({exc.strerror or exc}): start it "
            "(make up; SUTAZAI_PROFILE=production make up for the production profile) or "
            "set SUTAZAI_MLFLOW_TRACKING_URI") from None
    _ANSWERED.add(tracking_uri)


class ModelRegistry:
    """A thin, idempotent layer over ``MlflowClient`` for repository versions."""

    def __init__(self, tracking_uri: str, experiment: str = "sutazai-model-sync",
                 artifacts_dir: Path | None = None, *, settings: Settings | None = None
                 ) -> None:
        from mlflow.tracking import MlflowClient

        from sutazai.registry import embedded_mlflow
        from sutazai.security.secrets import export_mlflow_credentials

        # an http(s) server's login, from the given settings' secret provider
        export_mlflow_credentials(tracking_uri, settings)
        embedded_mlflow.prepare(tracking_uri)
        _require_listening(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifacts_dir = artifacts_dir
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @property
    def is_local(self) -> bool:
        return urlparse(self.tracking_uri).scheme in ("sqlite", "file", "")

    def _fail(self, action: str, exc: Exception) -> RegistryError:
        return RegistryError(
            f"MLflow at {self.tracking_uri} could not {action}: {exc}. Check that the "
            "tracking server runs and MLFLOW_TRACKING_URI / SUTAZAI_MLFLOW_TRACKING_URI is right"
        )

    # ------------------------------------------------------------------ lookups
    def find(self, manifest: Manifest) -> ModelVersion | None:
        query = f"name = '{manifest.name}' and tags.`{TAG}digest` = '{manifest.digest}'"
        try:
            found = self.client.search_model_versions(query)
        except Exception as exc:  # MlflowException, or requests' errors when unreachable
            raise self._fail(f"search versions of {manifest.name}", exc) from None
        return min(found, key=lambda v: int(v.version)) if found else None

    def aliases(self, manifest: Manifest) -> list[str]:
        found = self.find(manifest)
        if found is None:
            return []
        # search results leave aliases out; the version itself carries them
        return sorted(self.client.get_model_version(manifest.name, str(found.version)).aliases)

    def repository_version_for_alias(self, name: str, alias: str) -> int:
        """The repository version behind ``models:/NAME@ALIAS``."""
        version = self.version_by_alias(name, alias)
        if version is None:
            raise NotFoundError(
                f"{name} has no alias {alias!r} in MLflow at {self.tracking_uri}: run the "
                f"selection (make run, or sutazai bench select) or name a version: {name}:1"
            )
        return int(version.tags[f"{TAG}repository_version"])

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise self._fail(f"read alias {name}@{alias}", exc) from None
        except Exception as exc:
            raise self._fail(f"read alias {name}@{alias}", exc) from None

    # --------------------------------------------------------------- registering
    def register(
        self, manifest: Manifest, location: Path, pull_seconds: float | None = None
    ) -> RegisteredVersion:
        """Register ``manifest`` (files at ``location``) unless its digest already is.

        The version's source is ``sutazai://repository/snapshots/<name>/<version>``: an
        MLflow server refuses local paths outside a run's artifacts, and the repository
        may live on another machine anyway. The local path is kept in the
        ``sutazai.path`` tag.
        """
        from mlflow.exceptions import MlflowException

        try:
            self._ensure_registered_model(manifest)
            existing = self.find(manifest)
            if existing is not None:
                return self._registered(manifest, existing, created=False)
            run_id = self._log_registration_run(manifest, pull_seconds)
            mine = self.client.create_model_version(
                manifest.name, source=repository_uri(manifest), run_id=run_id,
                tags=version_tags(manifest) | {f"{TAG}path": str(location.resolve())},
                description=describe(manifest), await_creation_for=0,
            )
            # Two machines registering the same digest at once: the lowest version wins.
            canonical = self.find(manifest)
            assert canonical is not None
            if str(canonical.version) != str(mine.version):
                self.client.delete_model_version(manifest.name, str(mine.version))
                return self._registered(manifest, canonical, created=False)
        except MlflowException as exc:
            raise self._fail(f"register {manifest.ref}", exc) from None
        return self._registered(manifest, mine, created=True)

    def _registered(self, manifest: Manifest, version: ModelVersion, created: bool
                    ) -> RegisteredVersion:
        aliases = [] if created else self.client.get_model_version(
            manifest.name, str(version.version)).aliases
        return RegisteredVersion(
            name=manifest.name, version=str(version.version),
            repository_version=manifest.version, digest=manifest.digest, created=created,
            run_id=version.run_id, aliases=sorted(aliases or []),
        )

    def _ensure_registered_model(self, manifest: Manifest) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        try:
            self.client.get_registered_model(manifest.name)
            return
        except MlflowException:
            pass
        except Exception as exc:
            raise self._fail(f"read registered model {manifest.name}", exc) from None
        try:
            self.client.create_registered_model(
                manifest.name,
                tags={f"{TAG}format": manifest.format, f"{TAG}tasks": ",".join(manifest.tasks),
                      f"{TAG}license": manifest.license},
                description=f"{manifest.description or manifest.name} (mirrored by SutazAI "
                            f"from {manifest.source})",
            )
        except MlflowException as exc:  # created concurrently by another mirror
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise

    def experiment_id(self, name: str | None = None) -> str:
        """The id of experiment ``name`` (default: the registration one), created if new.

        With a local tracking store the artifacts go under ``<home>/mlflow-artifacts``
        rather than MLflow's default ``./mlruns`` in whatever folder the command ran.
        """
        name = name or self.experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if self.is_local and self.artifacts_dir is not None:
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            location = (self.artifacts_dir / name).resolve().as_uri()
        return str(self.client.create_experiment(name, artifact_location=location))

    def start_run(self, run_name: str, tags: dict[str, str], params: dict[str, Any],
                  experiment: str | None = None) -> str:
        """Create a run in ``experiment`` (default: the registration one) with its tags and
        params (one batch; values cut to MLflow's 500 characters); returns its id."""
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name,
                                     tags=tags)
        run_id = str(run.info.run_id)
        self.client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
        return run_id

    def _log_registration_run(self, manifest: Manifest, pull_seconds: float | None) -> str:
        run_id = self.start_run(
            f"register {manifest.ref}",
            tags={"sutazai.step": "register", f"{TAG}digest": manifest.digest},
            params={"model": manifest.name, "repository_version": manifest.version,
                    "source": manifest.source, "revision": manifest.revision,
                    "format": manifest.format, "files": len(manifest.files)},
        )
        self.client.log_metric(run_id, "size_bytes", manifest.size)
        if pull_seconds is not None:
            self.client.log_metric(run_id, "pull_seconds", pull_seconds)
        self.client.log_text(run_id, manifest.to_json(), "manifest.json")
        self.client.set_terminated(run_id)
        return run_id

    def delete(self, manifest: Manifest) -> None:
        found = self.find(manifest)
        if found is not None:
            self.client.delete_model_version(manifest.name, str(found.version))
