"""nodes can be disabled (drained): disabled, disabled_reason

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'


def upgrade():
    # Existing nodes stay schedulable: the server default fills their rows.
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('disabled', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('disabled_reason', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('disabled_reason')
        batch_op.drop_column('disabled')
