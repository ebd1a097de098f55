"""Jobs record the training steps their settings resolved to (max_steps, or n_epochs passes
over the training file), set by the worker when training starts (NULL until then).

Revision ID: 7a3d90e1c2b4
Revises: 5c1e7d2b9f40
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '7a3d90e1c2b4'
down_revision: str | None = '5c1e7d2b9f40'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('total_steps', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.drop_column('total_steps')
