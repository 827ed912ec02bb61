"""Configuration: frozen pydantic v2 models loaded from YAML plus ``DICOMNODE_*`` environment overrides.

Environment overrides use a double underscore between levels, e.g. ``DICOMNODE_NODE__PORT=11113`` sets
``node.port`` and ``DICOMNODE_DESTINATIONS__PACS__PORT=4243`` sets ``destinations.pacs.port``. Values are
parsed as YAML scalars/lists (``DICOMNODE_NODE__ALLOWED_CALLING_AETS='[CT1, MR2]'``).

Every validation error is reported with the dotted key and the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicomnode.errors import ConfigError

ENV_PREFIX = "DICOMNODE_"
DEFAULT_CONFIG_ENV = "DICOMNODE_CONFIG"
_SECRET_KEY_RE = re.compile(r"password|secret|hash|(^|\.)key($|\.)", re.IGNORECASE)
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash


def _check_ae(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_RE.match(value):
        raise ValueError(f"'{value}' is not a valid AE title (1-16 printable characters, no backslash)")
    return stripped


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TLSConfig(_Model):
    """DICOM TLS. For the listener: our certificate/key, and a CA bundle to verify clients with."""

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = False
    verify_peer: bool = True  # when sending: verify the peer's certificate against ``ca``

    @model_validator(mode="after")
    def _files_given(self) -> TLSConfig:
        if self.enabled and (self.cert is None or self.key is None) and self.require_client_cert:
            raise ValueError("tls.enabled with require_client_cert needs both 'cert' and 'key'")
        return self


class NodeConfig(_Model):
    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aets: list[str] = Field(default_factory=list)  # empty = any
    require_called_aet: bool = True  # the called AE must equal ae_title
    max_associations: int = Field(16, ge=1, le=1000)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(120.0, gt=0)
    max_pdu_size: int = Field(262144, ge=0)  # 0 = unlimited
    # protection of the port (see README "Receiving"): the A-ASSOCIATE-RQ must arrive within artim_timeout
    # of the connect; a PDU once started within artim_timeout + length / min_receive_rate
    artim_timeout: float = Field(10.0, gt=0)
    min_receive_rate: int = Field(16384, ge=1)  # bytes/s
    max_pending_connections: int = Field(64, ge=1, le=10000)  # connected, not associated yet
    max_pending_per_peer: int = Field(32, ge=1, le=10000)
    max_associations_per_peer: int = Field(0, ge=0, le=1000)  # 0 = only max_associations applies
    max_sequence_depth: int = Field(64, ge=1, le=100000)  # deeper nesting: refused with 0xC000
    max_inflated_mb: int = Field(256, ge=1)  # a deflated dataset expanding beyond: refused with 0xA700
    tls: TLSConfig = Field(default_factory=TLSConfig)
    # processes accepting on the port (SO_REUSEPORT): 1 = the node's own; auto = one per CPU (at most 8)
    receivers: int | Literal["auto"] = 1

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))

    @field_validator("receivers")
    @classmethod
    def _receivers(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= int(value) <= 64:
            raise ValueError(f"receivers must be 'auto' or 1 to 64, not {value!r}")
        return value

    @property
    def receiver_count(self) -> int:
        """How many processes receive (``receivers`` with ``auto`` resolved on this machine)."""
        if self.receivers == "auto":
            return max(1, min(os.cpu_count() or 1, 8))
        return int(self.receivers)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, values: list[str]) -> list[str]:
        return [_check_ae(v) for v in values]


class JournalConfig(_Model):
    """The receive journal (with ``storage.fsync``): each instance is committed with one fdatasync into
    pre-written segment files, the spool files are made durable in batches behind it."""

    enabled: bool = True
    segment_mb: int = Field(64, ge=1, le=4096)  # larger instances are stored directly (file + folder fsync)
    spare_segments: int = Field(1, ge=1, le=64)  # kept written and ready ahead of use
    max_segments: int = Field(8, ge=2, le=4096)  # per receiving process; when all are in use: direct
    # the spool files are fsynced in batches once the oldest has waited this long (or half the segments
    # are in use); until then the journal holds them
    sync_seconds: float = Field(2.0, ge=0, le=300)

    @model_validator(mode="after")
    def _spares_below_max(self) -> JournalConfig:
        if self.spare_segments >= self.max_segments:
            raise ValueError(f"spare_segments ({self.spare_segments}) must be below max_segments "
                             f"({self.max_segments})")
        return self


class StorageConfig(_Model):
    path: Path = Path("./dicomnode-data")
    fsync: bool = True  # every instance durable (journal record, or file and directory fsync) before Success
    journal: JournalConfig = Field(default_factory=JournalConfig)
    min_free_mb: int = Field(1024, ge=0)  # refuse new associations below this much free space
    max_used_percent: float = Field(95.0, gt=0, le=100)  # ... or above this fill level

    @property
    def spool_dir(self) -> Path:
        return self.path / "spool"

    @property
    def database_path(self) -> Path:
        return self.path / "dicomnode.sqlite3"

    @property
    def journal_dir(self) -> Path:
        """``<path>/journal``: one folder per receiving process (``0`` the node itself)."""
        return self.path / "journal"

    @property
    def jobs_dir(self) -> Path:
        return self.path / "jobs"


class CompletionConfig(_Model):
    series_quiet_seconds: float = Field(30.0, ge=0)
    study_quiet_seconds: float = Field(60.0, ge=0)
    check_interval_seconds: float = Field(1.0, gt=0)
    # shorter wait when InstanceNumbers/positions look complete
    content_quiet_seconds: float = Field(5.0, ge=0)


class RulesConfig(_Model):
    path: Path = Path("rules")
    watch: bool = True  # hot-reload on file change (SIGHUP always reloads)


class PipelinesConfig(_Model):
    """The site's own pipelines (YAML files like the shipped ones, models beside them)."""

    path: Path | None = None  # default: pipelines/ beside the rules folder


class TimeLimitsConfig(_Model):
    """Celery time limits of one pipeline: the soft limit raises inside the job, the hard one kills it."""

    soft_seconds: float = Field(gt=0)
    hard_seconds: float = Field(gt=0)

    @model_validator(mode="after")
    def _soft_below_hard(self) -> TimeLimitsConfig:
        if self.soft_seconds >= self.hard_seconds:
            raise ValueError(f"soft_seconds ({self.soft_seconds:g}) must be below hard_seconds "
                             f"({self.hard_seconds:g})")
        return self


class CeleryConfig(_Model):
    """``processing.executor: celery``: jobs run on Celery workers through a Redis broker."""

    shared_dir: Path | None = None  # jobs/<id>/in|out shared by node and workers; default storage.path/jobs
    scratch_dir: Path | None = None  # worker-local copy of the input; default the system temp dir
    hard_time_limit_seconds: float | None = Field(None, gt=0)  # default: job_timeout_seconds
    soft_time_limit_seconds: float | None = Field(None, gt=0)  # default: 90 % of the hard limit
    time_limits: dict[str, TimeLimitsConfig] = Field(default_factory=dict)  # per pipeline
    visibility_timeout_seconds: float = Field(43200.0, gt=0)  # must be >= 10 x the largest hard limit
    lease_seconds: float = Field(60.0, gt=0)  # grace after the hard limit / before a message counts lost
    reconcile_seconds: float = Field(5.0, gt=0)  # how often the node scans results and leases
    worker_max_memory_mb: int = Field(4096, ge=64)  # a worker child above this is replaced after its job
    urgent_rules: list[str] = Field(default_factory=list)  # jobs of these rules go to the urgent queue
    queue_prefix: str = Field("dicomnode", min_length=1)


class ProcessingConfig(_Model):
    executor: Literal["local", "celery"] = "local"
    workers: int = Field(1, ge=1, le=64)
    job_timeout_seconds: float = Field(1800.0, gt=0)
    max_attempts: int = Field(2, ge=1)
    itk_threads: int = Field(1, ge=1)
    broker_url: str | None = None
    celery: CeleryConfig = Field(default_factory=CeleryConfig)


class ViewerProfile(_Model):
    """What a destination's viewers can display."""

    seg_omit_empty_frames: bool = True
    secondary_capture: bool = False  # also send burned-in outlines for viewers without SEG/SR support
    send_seg: bool = True
    send_enhanced: bool = True
    send_sr: bool = True
    send_ko: bool = True  # Key Object Selection document flagging each finding's key slice


class BasicAuthConfig(_Model):
    user: str = Field(min_length=1)
    password_file: Path  # the password is read from this file at send time, never logged


class DicomwebAuthConfig(_Model):
    """Exactly one of a bearer token (read from a file) or HTTP basic authentication."""

    bearer_token_file: Path | None = None
    basic: BasicAuthConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DicomwebAuthConfig:
        if (self.bearer_token_file is None) == (self.basic is None):
            raise ValueError("give exactly one of 'bearer_token_file' or 'basic'")
        return self


class DicomwebConfig(_Model):
    """A STOW-RS destination (DICOMweb), e.g. a vendor-neutral archive or a cloud imaging store."""

    url: str  # the DICOMweb service root, e.g. https://archive.example.org/dicom-web
    auth: DicomwebAuthConfig | None = None
    ca: Path | None = None  # CA bundle to verify the server with (default: the system store)
    verify: bool = True  # verify the server's TLS certificate (off only for test set-ups)
    batch_size: int = Field(50, ge=1, le=1000)  # instances per STOW-RS request

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"'{value}' is not an http(s):// URL")
        return value.rstrip("/")


class DestinationConfig(_Model):
    """A DIMSE destination (``ae_title``/``host``/``port``) or a DICOMweb one (``dicomweb``)."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    calling_ae_title: str | None = None  # default: node.ae_title
    tls: TLSConfig = Field(default_factory=TLSConfig)
    transfer_syntaxes: list[str] = Field(default_factory=list)  # empty = Explicit VR LE, Implicit VR LE
    dicomweb: DicomwebConfig | None = None
    profile: ViewerProfile = Field(default_factory=ViewerProfile)
    deidentify: bool = False
    timeout: float = Field(60.0, gt=0)
    on_qc_fail: Literal["hold", "send"] = "hold"  # results whose QC failed: held for an operator, or sent
    storage_commitment: bool = False  # ask the destination to commit to keeping what it was sent (DIMSE)
    commitment_timeout: float = Field(600.0, gt=0)  # seconds to wait for its report before asking again

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae(value)

    @model_validator(mode="after")
    def _one_kind(self) -> DestinationConfig:
        dimse = [k for k in ("ae_title", "host", "port") if getattr(self, k) is not None]
        if self.storage_commitment and (self.dicomweb is not None or self.deidentify):
            raise ValueError("storage_commitment needs a DIMSE destination without deidentify (the "
                             "commitment names the SOP instances as the node keeps them)")
        if self.dicomweb is not None:
            if dimse:
                raise ValueError(
                    f"a destination is either DICOMweb ('dicomweb') or DIMSE (ae_title/host/port), "
                    f"not both: remove {', '.join(dimse)} or dicomweb"
                )
            return self
        missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"a DIMSE destination needs ae_title, host and port (missing: {', '.join(missing)}); "
                "for a DICOMweb destination give 'dicomweb: {url: ...}'"
            )
        return self

    @property
    def is_dicomweb(self) -> bool:
        return self.dicomweb is not None


class OutboxConfig(_Model):
    backoff_initial_seconds: float = Field(30.0, ge=0)
    backoff_max_seconds: float = Field(3600.0, gt=0)
    max_attempts: int = Field(20, ge=1)
    batch_size: int = Field(500, ge=1)
    poll_seconds: float = Field(1.0, gt=0)


class MetricsConfig(_Model):
    port: int = Field(9112, ge=0, le=65535)  # 0 = off
    host: str = "127.0.0.1"


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"
    include_phi: bool = False  # patient names/IDs in logs only when explicitly enabled


class RetentionConfig(_Model):
    enabled: bool = False
    keep_days: float = Field(30.0, gt=0)
    check_interval_minutes: float = Field(60.0, gt=0)  # how often retention looks for removable studies


class SecurityConfig(_Model):
    deidentification_secret: str | None = None  # keyed hash for pseudonymous UIDs/IDs


_PASSWORD_HASH_RE = re.compile(r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9_-]+=*\$[A-Za-z0-9_-]+=*$")


class ConsoleConfig(_Model):
    """The web console (``dicomnode/console``): off by default, loopback only unless configured."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    admin_user: str = "admin"  # the name to log in with (and recorded in the audit trail)
    admin_password_hash: str | None = None  # from `dicomnode console hash-password`: scrypt$N$r$p$salt$hash
    proxy_user_header: str | None = None  # e.g. X-Remote-User, set by an authenticating reverse proxy
    secret_key: str | None = None  # signs session cookies; null = random per start (logins end at restart)
    session_hours: float = Field(12.0, gt=0)  # a login lasts this long
    anonymous_read: bool = True  # visitors who are not logged in may view (patient names hidden), never write
    # login throttling, per user name and per client address (see README "Console security")
    login_max_failures: int = Field(5, ge=1)  # failed logins within login_window_minutes before a lockout
    login_window_minutes: float = Field(15.0, gt=0)
    login_lockout_minutes: float = Field(15.0, gt=0)  # how long that user / that address is refused
    # origins (scheme://host[:port]) besides the console's own that may POST, e.g. the public URL of a
    # reverse proxy that rewrites the Host header
    allowed_origins: list[str] = Field(default_factory=list)

    @field_validator("admin_password_hash")
    @classmethod
    def _password_hash(cls, value: str | None) -> str | None:
        if value is not None and not _PASSWORD_HASH_RE.match(value):
            raise ValueError(
                "should be 'scrypt$N$r$p$salt$hash' as printed by 'dicomnode console hash-password' "
                "(never the password itself)"
            )
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(r"^https?://[^/\s]+$", value):
                raise ValueError(f"'{value}' is not an origin like 'https://console.example.org' "
                                 "(scheme and host, optionally ':port', no path)")
        return [v.lower() for v in values]


class HealthConfig(_Model):
    """What ``dicomnode health`` and the destination metrics call unhealthy beyond the node itself."""

    destination_unreachable_minutes: float = Field(10.0, gt=0)  # failing this long without a success


class StowReceiveConfig(_Model):
    """STOW-RS reception: an HTTP(S) endpoint taking ``multipart/related; type="application/dicom"``
    uploads into the spool, with the same validation and durability as C-STORE. Off by default; when on,
    uploads must be authenticated by a bearer token (``bearer_tokens_file``) and/or a client certificate
    (``tls.require_client_cert``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8043, ge=0, le=65535)  # 0 = a free port (tests)
    tls: TLSConfig = Field(default_factory=TLSConfig)  # cert/key of the endpoint; ca + require_client_cert
    bearer_tokens_file: Path | None = None  # lines "<client-name> <token>" (chmod 600); '#' comments
    max_request_mb: float = Field(4096.0, gt=0)  # one upload (all its instances)
    max_instance_mb: float = Field(1024.0, gt=0)  # one instance (held in memory while it is checked)

    @model_validator(mode="after")
    def _authenticated(self) -> StowReceiveConfig:
        if self.enabled and self.bearer_tokens_file is None and not (
            self.tls.enabled and self.tls.require_client_cert
        ):
            raise ValueError(
                "STOW-RS reception must be authenticated: set bearer_tokens_file, or tls.enabled with "
                "require_client_cert (and ca)"
            )
        if self.tls.enabled and (self.tls.cert is None or self.tls.key is None):
            raise ValueError("tls.enabled needs the endpoint's 'cert' and 'key'")
        return self


class PriorsConfig(_Model):
    """Comparison with the patient's most recent comparable earlier study (``dicomnode.compare``)."""

    enabled: bool = False
    source: str | None = None  # a destination name; C-FIND/C-GET/C-MOVE or QIDO-RS/WADO-RS by its kind
    method: Literal["c-move", "c-get"] = "c-get"  # DIMSE retrieval (c-move: the source must know our AE)
    max_age_days: int = Field(1825, ge=1)
    rules: list[str] = Field(default_factory=list)  # the rules whose jobs ask for a comparison
    wait_seconds: float = Field(300.0, gt=0)  # the longest a result waits for its comparison
    retry_minutes: float = Field(30.0, gt=0)  # a comparison the source could not answer is tried again
    count: int = Field(1, ge=1, le=10)  # studies charted: the most recent is compared, older ones are history


class Config(_Model):
    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    completion: CompletionConfig = Field(default_factory=CompletionConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    pipelines: PipelinesConfig = Field(default_factory=PipelinesConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    priors: PriorsConfig = Field(default_factory=PriorsConfig)
    dicomweb: StowReceiveConfig = Field(default_factory=StowReceiveConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)

    @field_validator("destinations")
    @classmethod
    def _destination_names(cls, value: dict[str, DestinationConfig]) -> dict[str, DestinationConfig]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9_.-]+$", name):
                raise ValueError(f"destination name '{name}' may only contain letters, digits, '_', '.', '-'")
        return value

    @property
    def pipelines_folder(self) -> Path:
        """The site pipelines' folder: ``pipelines.path``, else ``pipelines/`` beside the rules folder."""
        return self.pipelines.path or self.rules.path.parent / "pipelines"

    @model_validator(mode="after")
    def _priors_source(self) -> Config:
        if self.priors.enabled:
            if not self.priors.source:
                raise ValueError("priors.enabled needs priors.source (a destination name)")
            if self.priors.source not in self.destinations:
                known = ", ".join(sorted(self.destinations)) or "none"
                raise ValueError(f"priors.source '{self.priors.source}' is not a configured destination "
                                 f"(configured: {known})")
        return self

    def destination(self, name: str) -> DestinationConfig:
        try:
            return self.destinations[name]
        except KeyError:
            known = ", ".join(sorted(self.destinations)) or "none"
            raise ConfigError(f"Destination '{name}' is not configured (configured: {known}).") from None


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"Invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown key (check the spelling; see conf/dicomnode.yaml for every option)"
        got = item.get("input")
        got_text = "" if item["type"] in ("extra_forbidden", "missing") else f" (got {got!r})"
        if _SECRET_KEY_RE.search(key):
            got_text = " (value not shown: it may be a secret)"
        lines.append(f"  {key}: {reason}{got_text}")
    return "\n".join(lines)


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    overrides = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == DEFAULT_CONFIG_ENV:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        if not keys:
            continue
        if keys[0] == "destinations" and len(keys) >= 2:
            keys[1] = name[len(ENV_PREFIX):].split("__")[1]  # keep the destination's own spelling
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        overrides.append((keys, value))
    return overrides


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration from ``path`` (or ``$DICOMNODE_CONFIG``) and apply environment overrides.

    With no file at all the embedded defaults are used. Raises :class:`ConfigError` naming each bad key.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(DEFAULT_CONFIG_ENV):
        path = environ[DEFAULT_CONFIG_ENV]
    data: dict[str, Any] = {}
    source = "the built-in defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"Configuration file '{path}' does not exist or is not a file.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"Configuration file '{path}' is not valid YAML{where}: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"Configuration file '{path}' must contain a mapping at the top level, "
                f"not {type(loaded).__name__}."
            )
        data = loaded
    overrides = _env_overrides(environ)
    for keys, value in overrides:
        _set_path(data, keys, value)
    if overrides:
        source += " with " + ", ".join(ENV_PREFIX + "__".join(k).upper() for k, _ in overrides)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
    return config
