"""Issue 21: tokens of chat completions per tenant, and on-demand safety evaluations of jobs.

Revision ID: 2d439ba3e748
Revises: 7a3d90e1c2b4
Create Date: 2026-12-03 08:17:16.902224
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '2d439ba3e748'
down_revision: str | None = '7a3d90e1c2b4'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('inference_usage',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('api_key_id', sa.String(length=40), nullable=True),
    sa.Column('model', sa.String(length=300), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_inference_usage_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inference_usage'))
    )
    with op.batch_alter_table('inference_usage', schema=None) as batch_op:
        batch_op.create_index('ix_inference_usage_tenant_created', ['tenant_id', 'created_at'], unique=False)

    op.create_table('safety_evaluations',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('judge', sa.String(length=200), nullable=False),
    sa.Column('n_prompts', sa.Integer(), nullable=False),
    sa.Column('harmful_score_base', sa.Double(), nullable=False),
    sa.Column('harmful_score_tuned', sa.Double(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['fine_tuning_jobs.id'], name=op.f('fk_safety_evaluations_job_id_fine_tuning_jobs')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_safety_evaluations_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_safety_evaluations'))
    )
    with op.batch_alter_table('safety_evaluations', schema=None) as batch_op:
        batch_op.create_index('ix_safety_evaluations_job_created', ['job_id', 'created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('safety_evaluations', schema=None) as batch_op:
        batch_op.drop_index('ix_safety_evaluations_job_created')

    op.drop_table('safety_evaluations')
    with op.batch_alter_table('inference_usage', schema=None) as batch_op:
        batch_op.drop_index('ix_inference_usage_tenant_created')

    op.drop_table('inference_usage')
