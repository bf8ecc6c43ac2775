"""the mobility loop's users, handover history, standbys and last moves

Revision ID: 0006_mob_users
Revises: 0005_enorm_qos
"""
import sqlalchemy as sa
from alembic import op

revision = '0006_mob_users'
down_revision = '0005_enorm_qos'


def upgrade():
    op.create_table(
        'mobility_users',
        sa.Column('user', sa.String(64), primary_key=True),
        sa.Column('ap', sa.String(64), nullable=False),
        sa.Column('previous', sa.String(64)),
        sa.Column('since', sa.Float(), nullable=False),
        sa.Column('address', sa.String(64)),
        sa.Column('mac', sa.String(17)),
        sa.Column('signal', sa.Float()))
    op.create_table(
        'mobility_transitions',
        sa.Column('order', sa.Integer(), primary_key=True),
        sa.Column('origin', sa.String(130), primary_key=True),
        sa.Column('next', sa.String(64), primary_key=True),
        sa.Column('count', sa.Integer(), nullable=False))
    op.create_table(
        'mobility_standbys',
        sa.Column('service_id', sa.String(36), primary_key=True),
        sa.Column('node', sa.String(64), primary_key=True),
        sa.Column('started_at', sa.Float(), nullable=False))
    op.create_table(
        'mobility_moves',
        sa.Column('service_id', sa.String(36), primary_key=True),
        sa.Column('at', sa.Float(), nullable=False))


def downgrade():
    for table in ('mobility_moves', 'mobility_standbys', 'mobility_transitions',
                  'mobility_users'):
        op.drop_table(table)
