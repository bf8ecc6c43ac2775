"""nodes.settings_warnings: a flashed node's card mistakes, for node show

Revision ID: 0010_full_settings_warnings
Revises: 0008_osbed_shared
"""
import sqlalchemy as sa
from alembic import op

revision = '0010_full_settings_warnings'
down_revision = '0008_osbed_shared'


def upgrade():
    # NULL: a node registered before this revision, or one without a card
    # (playbook-deployed); the next registration fills it.
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settings_warnings', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('settings_warnings')
