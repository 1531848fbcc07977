"""tenants (keys and jobs belong to one), key domains and limits, the audit log

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 12:30:00

Corpora, adapters, domains and evaluation sets need no column: a tenant's resource is named
`tenant:name` (adapters_store/tenancy.py).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'tenants',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('limits', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', name='uq_tenants_name'),
    )
    op.create_table(
        'audit_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('api_key_id', sa.Integer(), nullable=True),
        sa.Column('tenant', sa.String(length=64), nullable=True),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=256), nullable=False),
        sa.Column('details', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_audit_events_at', 'audit_events', ['at'])
    op.create_index('ix_audit_events_tenant', 'audit_events', ['tenant'])
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('domains', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('limits', sa.JSON(), nullable=True))
        batch_op.create_index('ix_api_keys_tenant', ['tenant'])
        batch_op.create_foreign_key('fk_api_keys_tenant', 'tenants', ['tenant'], ['name'])
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_jobs_tenant', ['tenant'])


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_tenant')
        batch_op.drop_column('tenant')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_constraint('fk_api_keys_tenant', type_='foreignkey')
        batch_op.drop_index('ix_api_keys_tenant')
        batch_op.drop_column('limits')
        batch_op.drop_column('domains')
        batch_op.drop_column('tenant')
    op.drop_index('ix_audit_events_tenant', table_name='audit_events')
    op.drop_index('ix_audit_events_at', table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_table('tenants')
