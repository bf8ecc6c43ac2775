"""per-node allocations (number, subnets, channel, zone) and join tokens

Revision ID: 0005_join_alloc
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005_join_alloc'
down_revision = '0004'


def upgrade():
    op.create_table(
        'node_allocations',
        sa.Column('identity', sa.String(128), primary_key=True),
        sa.Column('number', sa.Integer(), nullable=False, unique=True),
        sa.Column('node_id', sa.String(36), unique=True),
        sa.Column('node_name', sa.String(64)),
        sa.Column('instance_network', sa.String(64), nullable=False, unique=True),
        sa.Column('client_network', sa.String(64), unique=True),
        sa.Column('wifi_channel', sa.Integer()),
        sa.Column('availability_zone', sa.String(64)),
        sa.Column('source', sa.String(16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False))
    op.create_table(
        'join_tokens',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('secret_hash', sa.String(64), nullable=False),
        sa.Column('description', sa.String(255)),
        sa.Column('expires_at', sa.DateTime()),
        sa.Column('max_uses', sa.Integer()),
        sa.Column('uses', sa.Integer(), nullable=False),
        sa.Column('revoked', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('created_at', sa.DateTime(), nullable=False))
    op.create_index('ix_join_tokens_secret_hash', 'join_tokens', ['secret_hash'],
                    unique=True)


def downgrade():
    op.drop_index('ix_join_tokens_secret_hash', table_name='join_tokens')
    op.drop_table('join_tokens')
    op.drop_table('node_allocations')
