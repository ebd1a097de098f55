"""Dispatch owned by the database: when each waiting job or file was last sent to a worker.

``dispatched_at`` and ``dispatch_count`` on jobs and files let the dispatch sweep send again
the message of work that no worker claimed in time (a message lost with the broker);
``files.scoring_claim`` is the token of the worker that claimed a file's scoring.

Revision ID: 7e15d15a7c01
Revises: 2d439ba3e748
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '7e15d15a7c01'
down_revision: str | None = '2d439ba3e748'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column('dispatch_count', sa.Integer(), nullable=False, server_default='0')
        )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column('dispatch_count', sa.Integer(), nullable=False, server_default='0')
        )
        batch_op.add_column(sa.Column('scoring_claim', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_files_status', ['status'], unique=False)
        batch_op.create_index('ix_files_safety_status', ['safety_status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_safety_status')
        batch_op.drop_index('ix_files_status')
        batch_op.drop_column('scoring_claim')
        batch_op.drop_column('dispatch_count')
        batch_op.drop_column('dispatched_at')
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.drop_column('dispatch_count')
        batch_op.drop_column('dispatched_at')
