"""Service settings: environment variables ``VIGFACE_*`` (or a ``.env`` file), typed.

The defaults are the embedded single-machine mode: SQLite, a local folder as object store,
no broker (an in-process worker thread runs the shards), the bundled ``demo`` model. Every
local path defaults to one data home (``VIGFACE_HOME``, else ``$XDG_DATA_HOME/vigface``, else
``~/.local/share/vigface``), so every command finds the same database whatever folder it runs
in.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store import vigface_home
from vigface.precision import Precision


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGFACE_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=vigface_home, description="data home of local paths")
    database_url: str = Field("", description="SQLAlchemy URL (default: HOME/vigface.db)")
    broker_url: str | None = Field(None, description="Celery broker (redis://...); none: embedded")
    storage_url: str = Field(
        "", description="file://DIR or s3://bucket/prefix (default: file://HOME/storage)"
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto)")
    s3_public_endpoint_url: str | None = Field(
        None, description="the endpoint clients reach, for presigned links (default: the same)"
    )
    work_dir: Path | None = Field(None, description="scratch space for shards (HOME/work)")
    default_model: str = "demo"
    model_cache: Path | None = Field(None, description="models pulled from storage (HOME/models)")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        None, description="base of plain artifact links (default: http://HOST:PORT as served)"
    )
    sampler_batch_size: int = Field(32, ge=1, description="images per sampling forward")
    sampler_compile: bool = Field(False, description="torch.compile the DiT in the workers")
    sampler_precision: Precision = Field(
        "auto", description="auto: bf16 on CUDA and CPUs with native bf16, else fp32"
    )
    shard_identities: int = Field(50, ge=1, description="identities per shard (one task)")
    spare_fraction: float = Field(
        0.2, ge=0, description="spare prototypes reserved per shard, as a share of its identities"
    )
    spare_confidence: float = Field(
        0.999,
        gt=0,
        lt=1,
        description="with a measured drop rate in the model card: reserve enough spares that a "
        "shard runs out at most this rarely (1 - confidence); unused ones go back",
    )
    lease_seconds: int = Field(
        120,
        ge=10,
        description="a running shard's or finalize step's lease; a heartbeat renews it every "
        "third of it while the step lives, so a dead worker's step is taken over this soon",
    )
    max_step_attempts: int = Field(
        3,
        ge=1,
        description="a shard or finalize step started this many times without finishing (its "
        "worker died each time) fails the job with the reason instead of running again",
    )
    resend_after_seconds: int = Field(
        300, ge=5, description="re-send a shard still queued after this long (lost message)"
    )
    upload_retry_seconds: float = Field(
        300,
        ge=0,
        description="how long shard and dataset uploads retry an unreachable object store "
        "(back-off 1, 2, 4 ... 30 s) before the job fails (then POST /v1/jobs/{id}/retry)",
    )
    max_identities_per_job: int = Field(10_000, ge=1)
    confirm_above_images: int = Field(
        100_000, ge=1, description="orders above this many images need confirm_large: true"
    )
    confirm_above_eta_hours: float = Field(
        24.0, gt=0, description="orders estimated to take longer need confirm_large: true"
    )
    max_images_per_identity: int = Field(200, ge=1)
    default_monthly_quota: int = Field(
        1_000_000, ge=0, le=2**31 - 1, description="images per team per month"
    )
    session_secret: str = Field("dev-only-change-me", description="signs dashboard cookies")
    webhook_secret: str = Field("dev-only-webhook-secret", description="HMAC key for webhooks")
    leakage_judge_onnx: str | None = Field(
        None, description="independent FR model (insightface ONNX) as a second leakage test"
    )
    leakage_judge_gallery: str | None = Field(
        None, description=".npy of real embeddings by that model"
    )
    leakage_judge_threshold: float | None = Field(
        None, description="its cosine threshold for leakage"
    )
    probe_steps: int = Field(
        600, ge=1, description="step budget of the utility probe a job's evaluate_on runs"
    )
    outside_judge_gallery: str | None = Field(
        None,
        description=".npz of real people's descriptors by the outside judge (dlib), made by "
        "`vigface outside-judge`: each report then says how near identities are to real people",
    )
    webhook_allowed_hosts: list[str] = Field(
        [], description="hosts a webhook may call although they resolve to private addresses"
    )
    auth_cache_seconds: float = Field(
        2.0, ge=0, description="API reads reuse a key's team this long (0: look up every time)"
    )
    status_cache_seconds: float = Field(
        1.0, ge=0, description="job status and listing polls share one answer this long"
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest request body accepted")
    max_header_bytes: int = Field(
        65_536, ge=1024, description="largest request line and headers (431 past it)"
    )
    webhook_max_attempts: int = Field(8, ge=1, description="webhook POSTs before giving up")
    webhook_backoff_seconds: float = Field(
        2.0, gt=0, description="wait before the 2nd attempt; doubles after each failure"
    )

    @model_validator(mode="after")
    def _under_home(self):
        """Local paths left unset live under the data home (absolute, whatever the cwd)."""
        home = self.home.expanduser().resolve()
        self.home = home
        self.database_url = self.database_url or f"sqlite:///{home / 'vigface.db'}"
        self.storage_url = self.storage_url or f"file://{home / 'storage'}"
        self.work_dir = self.work_dir or home / "work"
        self.model_cache = self.model_cache or home / "models"
        return self

    @property
    def base_url(self) -> str:
        """Where clients reach this service: ``public_url``, else the address it serves on."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
