"""Per-tenant caps: concurrent jobs, file size and examples (NULL: the deployment default).

Revision ID: 5c1e7d2b9f40
Revises: b86722b454f3
Create Date: 2026-11-28 04:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '5c1e7d2b9f40'
down_revision: str | None = 'b86722b454f3'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_concurrent_jobs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_file_bytes', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('max_examples', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('max_examples')
        batch_op.drop_column('max_file_bytes')
        batch_op.drop_column('max_concurrent_jobs')
