"""domain configuration versions (tunings) and what a domain's configuration holds beyond retrieval

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 15:30:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'domain_configs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('domain_id', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('metric', sa.String(length=32), nullable=True),
        sa.Column('evalset', sa.String(length=128), nullable=True),
        sa.Column('holdout', sa.String(length=128), nullable=True),
        sa.Column('tuning_score', sa.Float(), nullable=True),
        sa.Column('holdout_score', sa.Float(), nullable=True),
        sa.Column('current_score', sa.Float(), nullable=True),
        sa.Column('job_id', sa.String(length=36), nullable=True),
        sa.Column('trials', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name='fk_domain_configs_domain_id',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('domain_id', 'version', name='uq_domain_configs_domain_id_version'),
    )
    op.create_index('ix_domain_configs_domain_id', 'domain_configs', ['domain_id'])
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prompt_template', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('demonstrations', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('max_tokens', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('config_version', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.drop_column('config_version')
        batch_op.drop_column('max_tokens')
        batch_op.drop_column('demonstrations')
        batch_op.drop_column('prompt_template')
    op.drop_index('ix_domain_configs_domain_id', table_name='domain_configs')
    op.drop_table('domain_configs')
