"""An optional audit log of predictions in a SQL database; off unless enabled.

Each photo of a request becomes one row: when, which model (its version, the SHA-256 of the
file that ran, the backend), the result (status, label, probabilities, band) and the photo's
SHA-256, so a prediction can later be tied to the exact model and file that produced it. The
photo itself, its file name, its EXIF data and the client's address are never stored.

Turn it on with ``MPOXSCAN_AUDIT_LOG=true`` (a SQLite file in the working directory) or by
naming any SQLAlchemy database in ``MPOXSCAN_AUDIT_DB_URL``. SQLAlchemy is imported only then.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from mpoxscan.web.schemas import PredictResponse
from mpoxscan.web.uploads import Upload

logger = logging.getLogger(__name__)

TABLE_NAME = "predictions"


@dataclass(frozen=True)
class AuditRecord:
    """One photo's prediction, as stored (no image, no file name, no EXIF, no client).

    Attributes:
        created: when the prediction was answered (UTC).
        request_id: the request's ``X-Request-ID``.
        model_version: the model card's version (12 hex digits of the weights' SHA-256).
        model_sha256: SHA-256 of the model file that ran (``model.onnx`` or the weights).
        backend: ``"onnx"`` or ``"torch"``.
        photo_index: the photo's 0-based position in the request.
        image_sha256: SHA-256 of the uploaded file's bytes (``None`` when it was over the size
            limit, so never held).
        status: ``ok``, ``no_lesion``, ``retake`` or ``error``.
        label: the predicted class (``ok`` only).
        probability: the positive class's probability (``ok`` only).
        probabilities: every class's probability (``ok`` only).
        band: ``low``, ``uncertain`` or ``high`` (``ok`` and ``no_lesion`` only).
        reason: the issue (``retake``) or error (``error``) codes, comma-separated.
    """

    created: datetime
    request_id: str
    model_version: str
    model_sha256: str
    backend: str
    photo_index: int
    image_sha256: str | None
    status: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] | None = None
    band: str | None = None
    reason: str | None = None


def audit_records(
    response: PredictResponse,
    uploads: Sequence[Upload],
    *,
    request_id: str,
    model_sha256: str,
) -> list[AuditRecord]:
    """The rows of one answered request: one per photo, in order."""
    created = datetime.now(UTC)
    records = []
    for result, upload in zip(response.results, uploads, strict=True):
        prediction = result.prediction
        reasons = [issue.code for issue in result.issues]
        if result.error is not None:
            reasons.append(result.error.code)
        records.append(
            AuditRecord(
                created=created,
                request_id=request_id,
                model_version=response.model.version,
                model_sha256=model_sha256,
                backend=response.model.backend,
                photo_index=result.index,
                image_sha256=None if upload.too_large else hashlib.sha256(upload.data).hexdigest(),
                status=result.status,
                label=prediction.label if prediction else None,
                probability=prediction.probability if prediction else None,
                probabilities=dict(prediction.probabilities) if prediction else None,
                band=prediction.band if prediction else None,
                reason=",".join(reasons) or None,
            )
        )
    return records


class AuditLog:
    """The audit table in a database; rows are only ever added.

    Args:
        url: a SQLAlchemy database URL (``sqlite:///path.sqlite3``,
            ``postgresql+psycopg://...``).

    Raises:
        RuntimeError: SQLAlchemy is not installed, or the database cannot be opened.
    """

    def __init__(self, url: str):
        try:
            import sqlalchemy as sa
        except ImportError as exc:
            raise RuntimeError(
                "The audit log needs SQLAlchemy: pip install 'mpoxscan[audit-log]', or unset "
                "MPOXSCAN_AUDIT_LOG and MPOXSCAN_AUDIT_DB_URL."
            ) from exc
        self._sa = sa
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        # hide_parameters: a database error message must not carry the row into the logs.
        self.engine = sa.create_engine(url, hide_parameters=True, connect_args=connect_args)
        self.table = _predictions_table(sa, sa.MetaData())
        try:
            self._create_table()
        except sa.exc.SQLAlchemyError as exc:
            raise RuntimeError(
                f"Cannot open the audit database ({type(exc).__name__}); check "
                "MPOXSCAN_AUDIT_DB_URL and that its folder exists and is writable."
            ) from exc

    def _create_table(self) -> None:
        try:
            self.table.metadata.create_all(self.engine)
        except self._sa.exc.OperationalError:
            # Two worker processes starting together can race to create the table.
            self.table.metadata.create_all(self.engine)

    def record(self, records: Sequence[AuditRecord]) -> None:
        """Append rows in one transaction.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database refused them.
        """
        if not records:
            return
        with self.engine.begin() as connection:
            connection.execute(self.table.insert(), [asdict(r) for r in records])

    def record_or_log(self, records: Sequence[AuditRecord]) -> bool:
        """Append rows; a database failure is logged (without the rows) and the request is
        still answered: the screen stays available when the audit database is not.

        Returns:
            Whether the rows were stored.
        """
        try:
            self.record(records)
        except self._sa.exc.SQLAlchemyError as exc:
            logger.error("audit log: %d row(s) not stored (%s)", len(records), type(exc).__name__)
            return False
        return True

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first (for tests and for exporting the log)."""
        with self.engine.connect() as connection:
            result = connection.execute(self.table.select().order_by(self.table.c.id))
            return [dict(row._mapping) for row in result]

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def _predictions_table(sa: Any, metadata: Any) -> Any:
    """The table's schema: no column can hold an image or a file name."""
    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("photo_index", sa.Integer, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=True, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("probability", sa.Float, nullable=True),
        sa.Column("probabilities", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("band", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
    )
